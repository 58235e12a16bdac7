//! The tool policy and the per-run budgets of tool calls, on the host,
//! against real servers (`mcp-server-time` and the project's fixture
//! server): denied tools hidden and refused, `ask` refused without a way
//! to ask, budgets of calls, per tool, argument and result bytes, and a
//! run that loops over refused calls.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use crate::util::{Shared, block_on, fixture_server, python, request, server, test_config};
use mcp_code_exec::call::call;
use mcp_code_exec::policy::ToolPolicy;
use mcp_code_exec::principals::Principal;
use mcp_code_exec::proxy::Proxy;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

/// The suite's rules file, as the operator would write it.
static RULES: LazyLock<PathBuf> = LazyLock::new(|| {
    let file = std::env::temp_dir().join(format!("policy-suite-{}.rules", std::process::id()));
    std::fs::write(
        &file,
        "# the suite's rules\n\
         deny  fixture-policy.crash\n\
         ask   fixture-policy.fail\n\
         deny  fixture-policy.pid for mallory,eve-*\n\
         allow time.*\n\
         allow fixture-policy.*   # everything else of the fixture\n\
         default deny\n",
    )
    .unwrap();
    file
});

static SERVICE: Shared = Shared::with(|| {
    let mut time = server(
        "time",
        python().with_file_name("mcp-server-time"),
        &["--local-timezone", "UTC"],
    );
    time.deny_tools = vec!["convert_*".into()];
    let servers = vec![time, fixture_server("fixture-policy")];
    let mut config = test_config();
    config.tool_calls_per_run = 8;
    config.tool_calls_per_tool = 5;
    config.tool_argument_bytes_per_run = 64 << 10;
    config.tool_result_bytes_per_run = 1 << 20;
    let policy = ToolPolicy::load(&RULES).expect("the suite's rules parse");
    Service::with_proxy(config, Arc::new(Proxy::new(servers).with_policy(policy)))
});

fn run_ok(code: &str) -> String {
    let mut request = request(code, Some(120.0));
    request.servers = vec!["time".into(), "fixture-policy".into()];
    let report = block_on(call(SERVICE.get(), &request));
    assert_eq!(report.status, RunStatus::Success, "{report:#?}");
    report.stdout
}

engine_test! {
    /// A denied tool is not in the run's view (functions, describe_server,
    /// list_tools) and a call to it anyway is refused by the host naming
    /// the rule; an `ask` tool is visible and refused (no way to ask).
    fn denied_tools_are_hidden_and_refused_naming_the_rule() {
        let code = r#"
print([t["name"] for t in runtime.describe_server("time")["tools"]])
print(hasattr(mcp_time, "convert_time"), hasattr(mcp_fixture_policy, "crash"))
tools = runtime.list_tools("fixture-policy")
print("crash" in tools, "fail" in tools, "structured" in tools)
for server, tool in [("time", "convert_time"), ("fixture-policy", "crash"), ("fixture-policy", "fail")]:
    try:
        await runtime.call_tool_raw(server, tool, {})
    except MCPError as e:
        print(e)
print((await mcp_fixture_policy.structured(name="allowed"))["greeting"])
"#;
        let rules = RULES.display();
        assert_eq!(
            run_ok(code),
            format!(
                "['get_current_time']\nFalse False\nFalse True True\n\
                 time.convert_time: tool \"convert_time\" of server \"time\" is denied by the tool \
                 policy (tests/util/mod.rs: \"denyTools\" of server \"time\" (\"convert_*\"))\n\
                 fixture-policy.crash: tool \"crash\" of server \"fixture-policy\" is denied by the \
                 tool policy ({rules}:2)\n\
                 fixture-policy.fail: tool \"fail\" of server \"fixture-policy\" needs a human's \
                 approval ({rules}:3), and this MCP client cannot be asked (it did not declare \
                 elicitation): the call is refused\n\
                 hello allowed\n"
            )
        );
    }
}

engine_test! {
    /// The first call over the budget per tool, then over the budget per
    /// run, is refused naming its variable; refused calls count nothing
    /// and the run goes on.
    fn call_budgets_per_tool_and_per_run_refuse_the_first_call_over() {
        let code = r#"
async def outcome(call):
    try:
        await call
        return "ok"
    except MCPError as e:
        return str(e)
for _ in range(6):
    print(await outcome(mcp_time.get_current_time(timezone="UTC")))
for i in range(4):
    print(await outcome(mcp_fixture_policy.structured(name=str(i))))
"#;
        let mut request = request(code, Some(120.0));
        request.servers = vec!["time".into(), "fixture-policy".into()];
        let report = block_on(call(SERVICE.get(), &request));
        let stdout = report.stdout.clone();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 10, "{stdout}");
        // The result lists the calls: 8 ok, 2 refused, in order.
        let calls = report.tool_calls.clone().expect("the run made calls");
        assert_eq!(calls.total, 10);
        let outcomes: Vec<(&str, &str, &str)> = calls
            .calls
            .iter()
            .map(|c| (c.server.as_str(), c.tool.as_str(), c.outcome))
            .collect();
        let time = ("time", "get_current_time", "ok");
        let structured = ("fixture-policy", "structured", "ok");
        assert_eq!(
            outcomes,
            [
                time, time, time, time, time,
                ("time", "get_current_time", "over_budget"),
                structured, structured, structured,
                ("fixture-policy", "structured", "over_budget"),
            ]
        );
        assert!(calls.calls[0].bytes > 0 && calls.calls[5].bytes == 0, "{calls:?}");
        let text = report.render(mcp_code_exec::config::OutputMode::Compact);
        assert!(
            text.ends_with("\ntool calls: 10 (8 ok, 2 over_budget)"),
            "one summary line: {text}"
        );
        assert_eq!(lines[..5], ["ok"; 5]);
        assert_eq!(
            lines[5],
            "time.get_current_time: this run called time.get_current_time 5 times, the budget \
             per tool (MCP_BRIDGE_TOOL_CALLS_PER_TOOL): the call is refused"
        );
        assert_eq!(lines[6..9], ["ok"; 3], "the refused call counted nothing");
        assert_eq!(
            lines[9],
            "fixture-policy.structured: this run made 8 tool calls, its budget \
             (MCP_BRIDGE_TOOL_CALLS_PER_RUN): the call is refused"
        );
        assert_eq!(
            run_ok("print(await mcp_time.get_current_time(timezone='UTC') is not None)"),
            "True\n",
            "budgets are per run"
        );
    }
}

engine_test! {
    /// Arguments and results over the run's byte budgets are refused
    /// naming their variables; the run goes on with smaller calls.
    fn byte_budgets_refuse_large_arguments_and_results() {
        let code = r#"
for call in [mcp_fixture_policy.structured(name="x" * (70 << 10)), mcp_fixture_policy.big(mib=2)]:
    try:
        await call
    except MCPError as e:
        print(e)
print((await mcp_fixture_policy.structured(name="small"))["greeting"])
"#;
        let stdout = run_ok(code);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{stdout}");
        assert!(
            lines[0].starts_with("fixture-policy.structured: this call's 716")
                && lines[0].ends_with(
                    "bytes of arguments would take the run's past 65536 bytes, its budget \
                     (MCP_BRIDGE_TOOL_ARGUMENT_BYTES_PER_RUN): the call is refused"
                ),
            "{stdout}"
        );
        assert!(
            lines[1].starts_with("fixture-policy.big: the result's ")
                && lines[1].ends_with(
                    "bytes would take the run's results past 1048576 bytes, their budget \
                     (MCP_BRIDGE_TOOL_RESULT_BYTES_PER_RUN): the result is refused"
                ),
            "{stdout}"
        );
        assert_eq!(lines[2], "hello small");
    }
}

engine_test! {
    /// 10,000 denied calls, then 1,000 over the budget: each is refused
    /// by the host with nothing kept for it, so the run's budget of calls
    /// is whole after the denied ones and the run ends normally.
    fn a_run_looping_over_refused_calls_stays_bounded() {
        let code = r#"
async def refusals(server, tool, arguments, n):
    seen = set()
    for _ in range(n):
        try:
            await runtime.call_tool_raw(server, tool, arguments)
        except MCPError as e:
            seen.add(str(e).split(" (")[0])
    return seen
print(await refusals("fixture-policy", "crash", {}, 10_000))
for i in range(5):
    await mcp_fixture_policy.structured(name=str(i))
for _ in range(3):
    await mcp_time.get_current_time(timezone="UTC")
print("8 calls after them")
print(await refusals("fixture-policy", "structured", {"name": "x"}, 1_000))
"#;
        let mut request = request(code, Some(120.0));
        request.servers = vec!["time".into(), "fixture-policy".into()];
        let report = block_on(call(SERVICE.get(), &request));
        let calls = report.tool_calls.as_ref().expect("the run made calls");
        assert_eq!(calls.total, 11_008, "every call counted");
        assert_eq!(calls.calls.len(), 100, "the first 100 listed");
        assert!(
            report
                .render(mcp_code_exec::config::OutputMode::Compact)
                .ends_with("\ntool calls: 11008 (100 denied, 10908 more not listed)")
        );
        assert_eq!(
            report.stdout,
            "{'fixture-policy.crash: tool \"crash\" of server \"fixture-policy\" is denied by the \
             tool policy'}\n8 calls after them\n\
             {'fixture-policy.structured: this run made 8 tool calls, its budget'}\n"
        );
    }
}

engine_test! {
    /// A rule `for` some principals applies to their runs only: for them the
    /// tool is hidden and refused naming the rule; for everyone else the next
    /// rule decides (here: allowed).
    fn a_rule_for_principals_applies_to_their_runs_only() {
        let code = r#"
print(hasattr(mcp_fixture_policy, "pid"))
try:
    print(type(await runtime.call_tool_raw("fixture-policy", "pid", {})).__name__)
except MCPError as e:
    print(e)
"#;
        let rules = RULES.display();
        let run_as = |name: &str| {
            let mut request = request(code, Some(120.0));
            request.servers = vec!["fixture-policy".into()];
            request.principal = Principal::new(name).unwrap();
            let report = block_on(call(SERVICE.get(), &request));
            assert_eq!(report.status, RunStatus::Success, "{report:#?}");
            report.stdout
        };
        let refused = format!(
            "False\nfixture-policy.pid: tool \"pid\" of server \"fixture-policy\" is denied by \
             the tool policy ({rules}:4)\n"
        );
        assert_eq!(run_as("mallory"), refused);
        assert_eq!(run_as("eve-2"), refused);
        assert_eq!(run_as("alice"), "True\ndict\n");
        assert_eq!(run_as("local"), "True\ndict\n");
    }
}

engine_test! {
    /// In a session the budgets are per call: each call of the session may
    /// make its own five calls to a tool, its interpreter kept between them.
    fn a_sessions_calls_each_have_the_runs_budgets() {
        let code = r#"
calls = globals().get("calls", 0)
for _ in range(5):
    await mcp_time.get_current_time(timezone="UTC")
    calls += 1
print(calls)
"#;
        for expected in ["5\n", "10\n"] {
            let mut request = request(code, Some(120.0));
            request.servers = vec!["time".into()];
            request.session = Some("budgets".into());
            let report = block_on(call(SERVICE.get(), &request));
            assert_eq!(report.status, RunStatus::Success, "{report:#?}");
            assert_eq!(report.stdout, expected, "the session kept its state");
            let calls = report.tool_calls.expect("the call made calls");
            assert_eq!(calls.total, 5);
            assert!(calls.calls.iter().all(|c| c.outcome == "ok"), "{calls:?}");
        }
        let mut end = request("", None);
        end.session = Some("budgets".into());
        end.end_session = true;
        block_on(call(SERVICE.get(), &end));
    }
}

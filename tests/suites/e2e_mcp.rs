//! The built binary over stdio: with the official MCP Python SDK as the
//! client, and shutdown behaviour (stdin EOF, SIGTERM) with raw JSON-RPC.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::server::{BINARY, Server};
use crate::util::{docker_ps, everything, python, wait_until};

engine_test! {
    fn official_python_sdk_drives_the_server() {
        let sdk = Command::new(python()).args(["-c", "import mcp"]).status();
        assert!(
            sdk.is_ok_and(|s| s.success()),
            "the MCP Python SDK is missing for {}: run scripts/test.sh, or pip install -r tests/e2e/requirements.txt \
         and set MCP_CODE_EXEC_TEST_PYTHON",
            python().display()
        );
        sdk_script("mcp_client.py", "all e2e checks passed");
    }
}

engine_test! {
    /// Images, files in and out, artifacts (their expiry and eviction) and a
    /// full workspace, through the official SDK (tests/e2e/rich_results.py).
    fn rich_results_through_the_official_sdk() {
        sdk_script("rich_results.py", "all rich-result checks passed");
    }
}

engine_test! {
    /// Sessions through the official SDK (tests/e2e/sessions.py): state kept
    /// and private, the limit, end_session, serialised calls, a timeout that
    /// ends a session, idle expiry, and their metrics.
    fn sessions_through_the_official_sdk() {
        sdk_script("sessions.py", "all session checks passed");
    }
}

engine_test! {
    /// Host files through the official SDK (tests/e2e/host_files.py): the
    /// read roots are the client's (its roots callback), a
    /// roots/list_changed notification moves them, a save lands beneath the
    /// write root.
    fn host_files_through_the_official_sdk() {
        sdk_script("host_files.py", "all host-file checks passed");
    }
}

/// Runs `tests/e2e/<script>` (an official-SDK client of the built binary)
/// and checks that it ends with `passed`, its last line when every check passed.
pub(crate) fn sdk_script(script: &str, passed: &str) {
    let path = format!("{}/tests/e2e/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python())
        .args([path.as_str(), BINARY])
        .env("MCP_CODE_EXEC_TEST_EVERYTHING", everything())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(passed),
        "{script} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

/// The labels of this server's containers.
fn containers(server: &Server) -> Vec<String> {
    let owners = docker_ps(&[
        "-a",
        "--filter",
        "label=mcp-code-exec.managed=true",
        "--format",
        "{{.Label \"mcp-code-exec.owner\"}}",
    ]);
    let me = format!("/{}/", server.child.id());
    owners
        .lines()
        .filter(|owner| owner.contains(&me))
        .map(str::to_owned)
        .collect()
}

fn start_warm() -> Server {
    let server = Server::start(&[("MCP_BRIDGE_POOL_MIN_IDLE", "2")], Stdio::null());
    wait_until("the pool to warm up", Duration::from_secs(60), || {
        containers(&server).len() >= 2
    });
    server
}

engine_test! {
    fn stdin_eof_removes_every_container_and_exits() {
        let mut server = start_warm();
        drop(server.stdin.take());
        server.wait_exit(Duration::from_secs(8));
        assert_eq!(containers(&server), Vec::<String>::new());
    }
}

engine_test! {
    fn sigterm_removes_every_container_and_exits() {
        let mut server = start_warm();
        Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        server.wait_exit(Duration::from_secs(8));
        assert_eq!(containers(&server), Vec::<String>::new());
    }
}

engine_test! {
    fn stdout_carries_only_protocol() {
        let mut server = Server::start(&[], Stdio::null());
        server.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run_python","arguments":{"code":"import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)"}}}"#);
        let reply: serde_json::Value =
            serde_json::from_str(&server.receive()).expect("every stdout line is JSON-RPC");
        assert_eq!(reply["id"], 2);
        assert_eq!(
            reply["result"]["structuredContent"]["stdout"],
            "to stdout\n"
        );
        assert_eq!(
            reply["result"]["content"][0]["text"],
            "to stdout\nstderr:\nto stderr\n"
        );
        drop(server.stdin.take());
        server.wait_exit(Duration::from_secs(8));
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut server.stdout, &mut rest).unwrap();
        assert_eq!(rest, "", "nothing but responses on stdout");
    }
}

engine_test! {
    /// A request over the 16 MiB line limit of the stdio transport gets an
    /// error with its id (found at the start of the line, as the Python SDK
    /// writes it, or at its end, as the TypeScript SDK does), and the server
    /// keeps serving. Before, such a request was dropped and never answered.
    fn an_oversized_request_is_answered_and_the_server_keeps_serving() {
        let mut server = Server::start(&[], Stdio::null());
        let _watchdog = server.watchdog(Duration::from_secs(90));
        let code = "#".repeat(17 << 20);
        let arguments = format!(r#""params":{{"name":"run_python","arguments":{{"code":"{code}"}}}}"#);
        let id_first = format!(r#"{{"jsonrpc":"2.0","id":41,"method":"tools/call",{arguments}}}"#);
        let id_last = format!(r#"{{"method":"tools/call",{arguments},"jsonrpc":"2.0","id":"big-42"}}"#);
        for (line, id) in [
            (id_first, serde_json::json!(41)),
            (id_last, serde_json::json!("big-42")),
        ] {
            server.send(&line);
            let reply: serde_json::Value =
                serde_json::from_str(&server.receive()).expect("an answer, not silence");
            assert_eq!(reply["id"], id, "{reply}");
            assert_eq!(reply["error"]["code"], -32600, "invalid request: {reply}");
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("limit of 16777216 bytes (16 MiB)"),
                "{message}"
            );
        }
        let result = server.run_python(serde_json::json!({"code": "print(6*7)"}));
        assert_eq!(result["stdout"], "42\n", "{result}");
    }
}

engine_test! {
    /// Tool approval through the official SDK (tests/e2e/approval.py): an
    /// `ask` rule's call waits for the SDK's elicitation callback; accepted,
    /// declined, cancelled and unanswered (MCP_BRIDGE_TOOL_APPROVAL_TIMEOUT),
    /// and a client without elicitation, each as the code and the result see it.
    fn tool_approval_through_the_official_sdk() {
        sdk_script("approval.py", "all approval checks passed");
    }
}

//! The built binary over stdio: with the official MCP Python SDK as the
//! client, and shutdown behaviour (stdin EOF, SIGTERM) with raw JSON-RPC.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::engine_tests_enabled;

const BINARY: &str = env!("CARGO_BIN_EXE_mcp-code-exec");

/// The interpreter with the SDK installed (scripts/test.sh makes a venv).
fn python() -> String {
    std::env::var("MCP_CODE_EXEC_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn official_python_sdk_drives_the_server() {
    if !engine_tests_enabled() {
        return;
    }
    let sdk = Command::new(python()).args(["-c", "import mcp"]).status();
    assert!(
        sdk.is_ok_and(|s| s.success()),
        "the MCP Python SDK is missing for {}: run scripts/test.sh, or pip install -r tests/e2e/requirements.txt \
         and set MCP_CODE_EXEC_TEST_PYTHON",
        python()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/mcp_client.py");
    let output = Command::new(python())
        .args([script, BINARY])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("all e2e checks passed"),
        "e2e client failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn start() -> Self {
        let mut child = Command::new(BINARY)
            .env("MCP_BRIDGE_POOL_MIN_IDLE", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut server = Self {
            child,
            stdin,
            stdout,
        };
        server.send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#);
        let reply = server.receive();
        assert!(
            reply.contains(r#""id":1"#) && reply.contains("mcp-code-exec"),
            "{reply}"
        );
        server.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        server
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn receive(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    fn containers(&self) -> Vec<String> {
        let output = Command::new("docker")
            .args(["ps", "-a", "--filter", "label=mcp-code-exec.managed=true"])
            .args(["--format", "{{.Label \"mcp-code-exec.owner\"}}"])
            .output()
            .unwrap();
        let me = format!("/{}/", self.child.id());
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|owner| owner.contains(&me))
            .map(str::to_owned)
            .collect()
    }

    fn wait_for_warm_pool(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.containers().len() < 2 {
            assert!(Instant::now() < deadline, "the pool never warmed up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "the server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn stdin_eof_removes_every_container_and_exits() {
    if !engine_tests_enabled() {
        return;
    }
    let mut server = Server::start();
    server.wait_for_warm_pool();
    drop(server.stdin.take());
    server.wait_exit(Duration::from_secs(8));
    assert_eq!(server.containers(), Vec::<String>::new());
}

#[test]
fn sigterm_removes_every_container_and_exits() {
    if !engine_tests_enabled() {
        return;
    }
    let mut server = Server::start();
    server.wait_for_warm_pool();
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    server.wait_exit(Duration::from_secs(8));
    assert_eq!(server.containers(), Vec::<String>::new());
}

#[test]
fn stdout_carries_only_protocol() {
    if !engine_tests_enabled() {
        return;
    }
    let mut server = Server::start();
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

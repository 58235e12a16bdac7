//! The built binary as a child process, driven with raw JSON-RPC over stdio.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_mcp-code-exec");

/// An empty directory used as HOME and working directory of the spawned
/// binary, so that MCP server files of the machine (`~/.claude.json`,
/// `./.mcp.json`, …) never leak into a test.
pub fn empty_home() -> &'static std::path::Path {
    static HOME: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("mcp-code-exec-test-home-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// The binary with a clean environment for discovery (see [`empty_home`]).
pub fn command() -> Command {
    let mut command = Command::new(BINARY);
    command.env("HOME", empty_home()).current_dir(empty_home());
    command
}

/// Runs the binary once with `args`, `stdin` and `env` (besides a quiet log
/// level), and waits for it.
pub fn run_binary(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut child = command()
        .args(args)
        .env("MCP_BRIDGE_LOG_LEVEL", "error")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A binary that stops at launch (invalid configuration) never reads it.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

pub struct Server {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Server {
    /// Starts `mcp-code-exec serve` with `env` and completes the MCP handshake.
    pub fn start(env: &[(&str, &str)], stderr: Stdio) -> Self {
        let mut child = command()
            .arg("serve")
            .env("MCP_BRIDGE_METRICS_ADDR", "off")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut server = Self {
            child,
            stdin,
            stdout,
            next_id: 1,
        };
        let reply = server.request(
            "initialize",
            serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}),
        );
        assert_eq!(
            reply["result"]["serverInfo"]["name"], "mcp-code-exec",
            "{reply}"
        );
        server.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        server
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn receive(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// Sends a request and returns its response (every stdout line must be JSON-RPC).
    pub fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
                .to_string(),
        );
        loop {
            let line = self.receive();
            let message: serde_json::Value =
                serde_json::from_str(&line).expect("every stdout line is JSON-RPC");
            if message["id"] == id {
                return message;
            }
        }
    }

    /// Calls `run_python` and returns its `structuredContent`.
    pub fn run_python(&mut self, arguments: serde_json::Value) -> serde_json::Value {
        let reply = self.request(
            "tools/call",
            serde_json::json!({"name": "run_python", "arguments": arguments}),
        );
        reply["result"]["structuredContent"].clone()
    }

    /// Kills the server unless the returned guard is dropped within `limit`:
    /// a read that would wait forever for an answer ends at EOF instead.
    pub fn watchdog(&self, limit: Duration) -> Watchdog {
        let disarmed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = disarmed.clone();
        let pid = self.child.id().to_string();
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("watchdog: no answer within {limit:?}; killing the server");
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        });
        Watchdog(disarmed)
    }

    pub fn wait_exit(&mut self, limit: Duration) {
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < limit,
                "the server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Disarms [`Server::watchdog`] when dropped.
pub struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.child.try_wait().ok().flatten().is_none() {
            let deadline = Instant::now() + Duration::from_secs(8);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

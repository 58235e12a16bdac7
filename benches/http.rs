//! Warm `print(6*7)` over MCP's streamable HTTP on loopback, client side
//! (reqwest, one 2025-11-25 session per client), next to the same call over
//! stdio (raw JSON-RPC lines): p50/p90/p99 of calls 10 ms apart, then
//! throughput at 4 and 64 clients in flight over HTTP. Both servers are the
//! built binary with the same pool (min idle 4, max 8).
//!
//! `cargo bench --bench http`. Skips with a message when no container
//! engine answers. Under `cargo test` each part runs briefly.

mod common;
#[allow(dead_code)] // the tests' driver; the bench uses part of it
#[path = "../tests/util/server.rs"]
mod server;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::percentiles;
use futures_util::StreamExt;
use mcp_code_exec::config::Config;
use mcp_code_exec::engine::Engine;
use server::{BINARY, Server, free_port};

const POOL: [(&str, &str); 3] = [
    ("MCP_BRIDGE_POOL_MIN_IDLE", "4"),
    ("MCP_BRIDGE_POOL_MAX", "8"),
    ("MCP_BRIDGE_LOG_LEVEL", "warn"),
];
const CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run_python","arguments":{"code":"print(6*7)"}}}"#;

/// The binary serving MCP over HTTP on a free loopback port, killed when dropped.
struct HttpServer {
    child: std::process::Child,
    url: String,
}

impl HttpServer {
    fn start() -> Self {
        let port = free_port();
        let child = server::command()
            .args(["serve", "--http", &format!("127.0.0.1:{port}")])
            .env("MCP_BRIDGE_METRICS_ADDR", "off")
            // Every client here is the one loopback principal, `local`.
            .env("MCP_BRIDGE_MAX_CALLS_PER_CLIENT", "64")
            .envs(POOL)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "no listener");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client's MCP session over HTTP.
struct Session {
    client: reqwest::Client,
    url: String,
    id: String,
}

impl Session {
    async fn open(client: &reqwest::Client, url: &str) -> Self {
        let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
        let response = Self::request(client, url, None, initialize).await;
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        drop(response.bytes().await);
        let session = Self {
            client: client.clone(),
            url: url.to_owned(),
            id,
        };
        let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        drop(Self::request(client, url, Some(&session.id), initialized).await);
        session
    }

    async fn request(
        client: &reqwest::Client,
        url: &str,
        session: Option<&str>,
        body: &'static str,
    ) -> reqwest::Response {
        let mut request = client
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body);
        if let Some(id) = session {
            request = request
                .header("Mcp-Session-Id", id)
                .header("MCP-Protocol-Version", "2025-11-25");
        }
        request.send().await.unwrap()
    }

    /// One `print(6*7)`, its answer read to the end and checked.
    async fn call(&self) {
        let response = Self::request(&self.client, &self.url, Some(&self.id), CALL).await;
        let answer = response.text().await.unwrap();
        assert!(answer.contains(r#""status":"success""#), "{answer}");
    }
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(error) = tokio.block_on(Engine::connect(Config::default().engine)) {
        eprintln!("SKIPPED http benchmarks: {error}");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = |count: usize| if full { count } else { 3 };
    let pause = Duration::from_millis(10);
    println!("\nwarm print(6*7), client side, calls 10 ms apart ({BINARY}):");

    let mut stdio = Server::start(&POOL, Stdio::null());
    std::thread::sleep(Duration::from_secs(3)); // the pool warms up
    let samples = (0..n(500))
        .map(|_| {
            std::thread::sleep(pause);
            let started = Instant::now();
            let result = stdio.run_python(serde_json::json!({"code": "print(6*7)"}));
            assert_eq!(result["status"], "success", "{result}");
            started.elapsed()
        })
        .collect();
    percentiles("stdio, one client", samples);
    drop(stdio);

    let http = HttpServer::start();
    std::thread::sleep(Duration::from_secs(3));
    let client = reqwest::Client::new();
    let session = tokio.block_on(Session::open(&client, &http.url));
    let samples = (0..n(500))
        .map(|_| {
            std::thread::sleep(pause);
            let started = Instant::now();
            tokio.block_on(session.call());
            started.elapsed()
        })
        .collect();
    percentiles("streamable HTTP, one client", samples);

    for clients in [4, 64] {
        let sessions: Vec<Session> = tokio.block_on(async {
            let mut sessions = Vec::new();
            for _ in 0..clients {
                sessions.push(Session::open(&client, &http.url).await);
            }
            sessions
        });
        let each = n(2000) / clients + 1;
        let started = Instant::now();
        tokio.block_on(
            futures_util::stream::iter(sessions.iter()).for_each_concurrent(None, |s| async move {
                for _ in 0..each {
                    s.call().await;
                }
            }),
        );
        let calls = each * clients;
        println!(
            "streamable HTTP, {clients} clients in flight: {calls} calls, {:.0} calls/s",
            calls as f64 / started.elapsed().as_secs_f64()
        );
    }
}

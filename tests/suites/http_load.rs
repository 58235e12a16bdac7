//! MCP over HTTP under load, against the built binary: a thousand idle
//! event streams hold a descriptor each and little memory, and other
//! clients are served meanwhile; 64 clients of four principals make 10,000
//! calls without an error, and the server's memory stays flat; sessions a
//! client opens and leaves are bounded, the least recently used idle one
//! closed first.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::http::{HttpServer, INITIALIZE, free_port, http_client, tokens_file};
use crate::util::{block_on, wait_until};

/// The server's open descriptors and resident memory (MiB).
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    (fds, kib / 1024)
}

/// A 2025-11-25 MCP session over HTTP: its id, after `initialize` and
/// `notifications/initialized`.
async fn open_session(client: &reqwest::Client, url: &str, token: &str) -> String {
    let response = initialize(client, url, token).await;
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(response.bytes().await.unwrap());
    let initialized = post(
        client,
        url,
        token,
        &session,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.into(),
    )
    .await;
    assert_eq!(initialized.0, 202, "{}", initialized.1);
    session
}

/// POSTs an `initialize` (no session yet).
async fn initialize(client: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .body(INITIALIZE)
        .send()
        .await
        .unwrap()
}

/// POSTs `body` in `session`: the status and the whole answer.
async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: &str,
    body: String,
) -> (u16, String) {
    let response = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-11-25")
        .header("Mcp-Session-Id", session)
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[test]
fn a_thousand_idle_event_streams_are_bounded_and_others_are_served() {
    // One principal (loopback, no token) with a thousand sessions in use.
    let bounds = [("MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS_PER_CLIENT", "1024")];
    let server = HttpServer::start_on(free_port(), &bounds);
    let url = server.url.clone();
    let client = http_client();
    let pid = server.pid();
    // One session first, so what is measured after is the streams' cost.
    block_on(open_session(&client, &url, "any"));
    let (fds_before, rss_before) = usage(pid);
    let streams = block_on(async {
        let mut streams = Vec::new();
        for _ in 0..1000 {
            let session = open_session(&client, &url, "any").await;
            let stream = client
                .get(&url)
                .header("Accept", "text/event-stream")
                .header("MCP-Protocol-Version", "2025-11-25")
                .header("Mcp-Session-Id", &session)
                .send()
                .await
                .unwrap();
            assert_eq!(stream.status(), 200);
            streams.push(stream.bytes_stream());
        }
        streams
    });
    let (fds_open, rss_open) = usage(pid);
    eprintln!(
        "1000 idle streams: descriptors {fds_before} -> {fds_open}, resident {rss_before} -> {rss_open} MiB"
    );
    assert!(
        fds_open <= fds_before + 1000 + 32,
        "one descriptor a stream: {fds_before} -> {fds_open}"
    );
    // Each holds an MCP session (rmcp's, with its worker and channels) and
    // a connection: ~75 KiB measured; at most 128 KiB.
    assert!(
        rss_open <= rss_before + 125,
        "1000 idle streams took {} MiB",
        rss_open - rss_before
    );
    // Another client is served meanwhile, at once.
    let served = block_on(async {
        let session = open_session(&client, &url, "any").await;
        post(
            &client,
            &url,
            "any",
            &session,
            r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#.into(),
        )
        .await
    });
    assert_eq!(served.0, 200, "{}", served.1);
    drop(streams);
    wait_until(
        "the streams' descriptors closed",
        Duration::from_secs(30),
        || usage(pid).0 <= fds_before + 32,
    );
}

/// A GET event stream of `session`, open (the session is in use) while
/// the response lives.
async fn event_stream(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: &str,
) -> reqwest::Response {
    let stream = client
        .get(url)
        .header("Accept", "text/event-stream")
        .header("MCP-Protocol-Version", "2025-11-25")
        .header("Mcp-Session-Id", session)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    stream
}

const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;

#[test]
fn sessions_a_client_opens_and_leaves_are_bounded_the_least_recently_used_idle_one_closed() {
    let (dir, tokens) = tokens_file("mcp-sessions", &["p0", "p1"]);
    let server = HttpServer::start_on(
        free_port(),
        &[
            ("MCP_BRIDGE_HTTP_TOKENS_FILE", tokens.to_str().unwrap()),
            ("MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS_PER_CLIENT", "4"),
        ],
    );
    let (url, pid) = (server.url.clone(), server.pid());
    let client = http_client();
    block_on(async {
        let mut sessions = Vec::new();
        for _ in 0..4 {
            sessions.push(open_session(&client, &url, "p0-token").await);
        }
        // s0 is used again: s1 is now the one used longest ago.
        let ping = |session: String| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                post(&client, &url, "p0-token", &session, PING.into())
                    .await
                    .0
            }
        };
        assert_eq!(ping(sessions[0].clone()).await, 200);
        sessions.push(open_session(&client, &url, "p0-token").await);
        assert_eq!(
            ping(sessions[1].clone()).await,
            404,
            "the least recently used went"
        );
        for kept in [0, 2, 3, 4] {
            assert_eq!(
                ping(sessions[kept].clone()).await,
                200,
                "session {kept} kept"
            );
        }
        // Each of the four in use (an open event stream): a fifth is refused.
        let mut streams = Vec::new();
        for kept in [0, 2, 3, 4] {
            streams.push(event_stream(&client, &url, "p0-token", &sessions[kept]).await);
        }
        let refused = initialize(&client, &url, "p0-token").await;
        assert_eq!(refused.status(), 503);
        let text = refused.text().await.unwrap();
        assert!(
            text.contains("MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS_PER_CLIENT=4"),
            "{text}"
        );
        // Another principal has its own bound.
        let other = open_session(&client, &url, "p1-token").await;
        assert_eq!(
            post(&client, &url, "p1-token", &other, PING.into()).await.0,
            200
        );
        // A stream that ends leaves its session idle, and it can go again.
        drop(streams.remove(0));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if initialize(&client, &url, "p0-token").await.status() == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stream's end was never noted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ping(sessions[0].clone()).await, 404, "the idle one went");
        drop(streams);
    });
    // A client that opens sessions and leaves them (600: ~75 KiB each in
    // rmcp, were they all kept until its 5-minute idle timeout) grows the
    // server by its four, not by all.
    let (_, rss_before) = usage(pid);
    block_on(async {
        for _ in 0..600 {
            open_session(&client, &url, "p0-token").await;
        }
    });
    let (_, rss_after) = usage(pid);
    eprintln!("600 sessions opened and left: resident {rss_before} -> {rss_after} MiB");
    assert!(
        rss_after <= rss_before + 12,
        "600 sessions left open grew the server from {rss_before} to {rss_after} MiB"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

engine_test! {
    fn sixty_four_clients_make_ten_thousand_calls_and_memory_stays_flat() {
        let principals = ["p0", "p1", "p2", "p3"];
        let (dir, tokens) = tokens_file("http-load", &principals);
        let server = HttpServer::start_on(
            free_port(),
            &[
                ("MCP_BRIDGE_HTTP_TOKENS_FILE", tokens.to_str().unwrap()),
                ("MCP_BRIDGE_POOL_MIN_IDLE", "4"),
                ("MCP_BRIDGE_POOL_MAX", "8"),
                ("MCP_BRIDGE_LOG_LEVEL", "warn"),
            ],
        );
        let (url, pid) = (server.url.clone(), server.pid());
        let client = http_client();
        // 64 clients, 16 of each principal (its MCP_BRIDGE_MAX_CALLS_PER_CLIENT),
        // in two rounds: 2,000 calls, then 8,000; memory is read between.
        let round = |calls_each: usize| {
            let clients = (0..64).map(|n| {
                let (client, url) = (client.clone(), url.clone());
                let token = format!("{}-token", principals[n % 4]);
                async move {
                    let session = open_session(&client, &url, &token).await;
                    for i in 0..calls_each {
                        let body = format!(
                            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"run_python","arguments":{{"code":"print({n} * {i})"}}}}}}"#,
                            i + 10
                        );
                        let (status, answer) = post(&client, &url, &token, &session, body).await;
                        let expected = format!(r#""stdout":"{}\n""#, n * i);
                        assert!(
                            status == 200 && answer.contains("\"status\":\"success\"")
                                && answer.contains(&expected),
                            "client {n}, call {i}: {status} {answer}"
                        );
                    }
                }
            });
            block_on(futures_util::stream::iter(clients).for_each_concurrent(None, |c| c));
        };
        let started = Instant::now();
        round(32); // 2,048 calls
        let (_, rss_warm) = usage(pid);
        let warm_took = started.elapsed();
        round(125); // 8,000 calls
        let (_, rss_end) = usage(pid);
        let took = started.elapsed();
        eprintln!(
            "64 HTTP clients, 10,048 calls: {:.0} calls/s ({:.0} in the first round); resident {rss_warm} MiB after 2,048, {rss_end} MiB after 10,048",
            10_048.0 / took.as_secs_f64(),
            2_048.0 / warm_took.as_secs_f64()
        );
        assert!(
            rss_end <= rss_warm + 32,
            "the server's memory grew from {rss_warm} to {rss_end} MiB over 8,000 calls"
        );
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `MCP_BRIDGE_HTTP_MAX_CONNECTIONS`: past the bound a connection waits in
/// the listen backlog, unserved, and is served once one of the others closes.
#[test]
fn a_connection_past_the_bound_waits_until_another_closes() {
    use std::io::{Read, Write};
    let listener = block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "served" }));
    let stop = tokio_util::sync::CancellationToken::new();
    crate::util::spawn(mcp_code_exec::http::accept(
        listener,
        router,
        stop.clone(),
        2,
    ));
    let connect = || std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut idle = vec![connect(), connect()];
    let mut third = connect();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answer = [0u8; 256];
    let waited = third.read(&mut answer);
    assert!(
        waited.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "the third connection was served while two were open: {waited:?}"
    );
    drop(idle.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = String::new();
    third.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("served"),
        "{text}"
    );
    stop.cancel();
}

engine_test! {
    /// `MCP_BRIDGE_MAX_CALLS_PER_CLIENT`: while a principal's one call runs,
    /// its next is refused at once, naming the variable, even from another
    /// MCP session of the same token (the bound is the principal's, not a
    /// session's), and the refusal has its line in the audit log like any
    /// other call (checked to fail with the refusal answered before the call
    /// is observed: then no line). The seat is given back: a call after both
    /// runs.
    fn a_call_past_its_clients_bound_is_refused_naming_the_variable_and_audited() {
        let (dir, tokens) = tokens_file("http-quota", &["ann"]);
        let audit = dir.join("audit.jsonl");
        let server = HttpServer::start_on(
            free_port(),
            &[
                ("MCP_BRIDGE_HTTP_TOKENS_FILE", tokens.to_str().unwrap()),
                ("MCP_BRIDGE_MAX_CALLS_PER_CLIENT", "1"),
                ("MCP_BRIDGE_POOL_MIN_IDLE", "1"),
                ("MCP_BRIDGE_AUDIT_LOG", audit.to_str().unwrap()),
            ],
        );
        let client = http_client();
        let url = server.url.clone();
        let call = |id: u32, code: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"run_python","arguments":{{"code":"{code}"}}}}}}"#
            )
        };
        let (quick, slow_code) = (
            "print('quick')",
            "import time; time.sleep(5); print('slow')",
        );
        let (slow, refused) = block_on(async {
            let session = open_session(&client, &url, "ann-token").await;
            let other_session = open_session(&client, &url, "ann-token").await;
            let slow_done = std::sync::atomic::AtomicBool::new(false);
            let slow = async {
                let answer = post(&client, &url, "ann-token", &session, call(2, slow_code)).await.1;
                slow_done.store(true, std::sync::atomic::Ordering::Relaxed);
                answer
            };
            // Quick calls until one finds the slow one in flight (or, when
            // one was in flight as the slow one came, until that is answered).
            let refused = async {
                while !slow_done.load(std::sync::atomic::Ordering::Relaxed) {
                    let (_, answer) =
                        post(&client, &url, "ann-token", &other_session, call(3, quick)).await;
                    if !answer.contains(r#""status":"success""#) {
                        return Some(answer);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None
            };
            let answers = tokio::join!(slow, refused);
            let (_, after) = post(&client, &url, "ann-token", &session, call(4, quick)).await;
            assert!(after.contains(r#""stdout":"quick\n""#), "the seat was not given back: {after}");
            answers
        });
        // Whichever came second is refused; the other runs.
        let (refused, refused_code) = match refused {
            Some(refused) => {
                assert!(slow.contains(r#""stdout":"slow\n""#), "{slow}");
                (refused, quick)
            }
            None => (slow, slow_code),
        };
        assert!(
            refused.contains(r#""status":"error""#)
                && refused.contains("MCP_BRIDGE_MAX_CALLS_PER_CLIENT=1"),
            "{refused}"
        );
        let refusals = || -> Vec<serde_json::Value> {
            std::fs::read_to_string(&audit)
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                .filter(|line| line["status"] == "error")
                .collect()
        };
        wait_until("the refusal's audit line", Duration::from_secs(10), || {
            !refusals().is_empty()
        });
        let line = &refusals()[0];
        assert_eq!(line["principal"], "ann", "{line}");
        assert_eq!(line["code"], refused_code, "{line}");
        assert!(
            line["error"]
                .as_str()
                .is_some_and(|error| error.contains("MCP_BRIDGE_MAX_CALLS_PER_CLIENT=1")),
            "{line}"
        );
        assert!(line.get("sandbox").is_none(), "a refused call had a sandbox: {line}");
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

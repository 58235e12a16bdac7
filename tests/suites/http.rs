//! MCP over streamable HTTP (`serve --http`): the official Python SDK's
//! streamable-HTTP client against the built binary (tests/e2e/http_client.py:
//! run_python, progress, artifacts; two principals kept apart: sessions,
//! artifacts, the quota, MCP session ids, 2026-07-28 stateless requests;
//! tokens missing, wrong and revoked, a bad Origin, a body over 16 MiB; a
//! call in flight at SIGTERM still answered); the official TypeScript SDK's
//! client (tests/e2e/http_client_ts.mjs: run_python, progress, cancel,
//! artifacts); the official conformance suite for both revisions; JWT
//! access tokens of an external issuer and their forgeries; revocation
//! without a restart; and the refusal to listen beyond loopback without
//! tokens.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcp_code_exec::http::HEADER_READ_TIMEOUT;
use mcp_code_exec::http::auth::{RELOAD_EVERY, token_hash};
use mcp_code_exec::http::jwt::REFETCH_AFTER;
use serde_json::{Value, json};

use crate::e2e_mcp::sdk_script;
use crate::util::block_on;
use crate::util::issuer::{
    ISSUER, Issuer, SigningKey, now, sign_eddsa, sign_hs256, tampered, unsigned,
};
use crate::util::server::run_binary;

engine_test! {
    fn the_official_sdk_over_streamable_http_with_two_principals() {
        sdk_script("http_client.py", "all http checks passed");
    }
}

/// Beyond loopback, tokens are required: the server refuses to start, and
/// says which variable to set, before it starts anything.
#[test]
fn a_non_loopback_listener_without_tokens_refuses_to_start() {
    for args in [&["serve", "--http", "0.0.0.0:0"][..], &["serve"][..]] {
        let output = run_binary(args, "", &[("MCP_BRIDGE_HTTP_ADDR", "0.0.0.0:0")]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("MCP_BRIDGE_HTTP_TOKENS_FILE") && stderr.contains("0.0.0.0:0"),
            "{args:?}: {stderr}"
        );
    }
    let output = run_binary(
        &["serve", "--http", "127.0.0.1:0"],
        "",
        &[("MCP_BRIDGE_HTTP_TOKENS_FILE", "/nonexistent/tokens")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read MCP_BRIDGE_HTTP_TOKENS_FILE /nonexistent/tokens"),
        "{stderr}"
    );
}

/// `mcp-code-exec serve --http 127.0.0.1:PORT` as a child process, ended
/// when dropped.
pub(crate) struct HttpServer {
    child: std::process::Child,
    pub url: String,
}

impl HttpServer {
    /// Starts it on `port` with `env` and waits until it listens.
    pub(crate) fn start_on(port: u16, env: &[(&str, &str)]) -> Self {
        let mut child = crate::util::server::command()
            .args(["serve", "--http", &format!("127.0.0.1:{port}")])
            .env("MCP_BRIDGE_METRICS_ADDR", "off")
            .env("MCP_BRIDGE_POOL_MIN_IDLE", "0")
            .env("MCP_BRIDGE_LOG_LEVEL", "info")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        crate::util::wait_until("the HTTP listener", Duration::from_secs(30), || {
            assert!(child.try_wait().unwrap().is_none(), "the server exited");
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }

    /// POSTs an `initialize` with `Authorization: Bearer token`: the
    /// status and the `WWW-Authenticate` challenge.
    pub(crate) fn initialize_with(&self, token: &str) -> (u16, String) {
        let (status, challenge, _) = self.post(token, None, INITIALIZE);
        (status, challenge)
    }

    /// POSTs `body` with `token`, in MCP session `session` if any: the
    /// status, the challenge and the session id answered.
    pub(crate) fn post(
        &self,
        token: &str,
        session: Option<&str>,
        body: &'static str,
    ) -> (u16, String, Option<String>) {
        let mut request = http_client()
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("Authorization", format!("Bearer {token}"))
            .body(body);
        if let Some(id) = session {
            request = request
                .header("Mcp-Session-Id", id)
                .header("MCP-Protocol-Version", "2025-11-25");
        }
        let response = block_on(request.send()).unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (challenge, session) = (header("www-authenticate"), header("mcp-session-id"));
        (
            response.status().as_u16(),
            challenge.unwrap_or_default(),
            session,
        )
    }
}

pub(crate) const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

/// A port free on loopback now.
/// A fresh folder `mcp-{label}-<pid>` in the temp folder, holding a tokens
/// file (`MCP_BRIDGE_HTTP_TOKENS_FILE`) that gives each of `principals` the
/// token `<name>-token`: the folder and the file.
pub(crate) fn tokens_file(
    label: &str,
    principals: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("mcp-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    let lines: String = principals
        .iter()
        .map(|name| format!("{name}:{}\n", token_hash(&format!("{name}-token"))))
        .collect();
    std::fs::write(&tokens, lines).unwrap();
    (dir, tokens)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain-HTTP client (reqwest wants a TLS provider even so).
pub(crate) fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

impl HttpServer {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// JWT access tokens of an external authorization server (a real key-set
/// server on loopback, keys made now): a valid token is served, as its
/// `sub`'s principal; every forgery and misuse is a 401 `invalid_token`:
/// expired, not yet valid, another audience (RFC 8707), another issuer, no
/// `exp`, tampered claims, another key's signature, `alg: none`, HS256
/// keyed with the public key (algorithm confusion), a symmetric key in the
/// set, an EdDSA token under an EC key's id; made-up `kid`s do not make the server
/// fetch the key set again and again; a key rotated in is found.
#[test]
fn jwt_access_tokens_are_verified_and_every_forgery_refused() {
    let (k1, k2) = (SigningKey::new("k1"), SigningKey::new("k2"));
    let secret = b"a symmetric key the issuer should never publish";
    let symmetric = json!({"kty": "oct", "kid": "sym", "k": URL_SAFE_NO_PAD.encode(secret)});
    let issuer = Issuer::start(vec![k1.jwk(), symmetric]);
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let (dir, tokens) = tokens_file("jwt-test", &["ann"]);
    let jwks_url = issuer.jwks_url();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = HttpServer::start_on(
        port,
        &[
            ("MCP_BRIDGE_METRICS_ADDR", &metrics_addr),
            ("MCP_BRIDGE_HTTP_JWT_ISSUER", ISSUER),
            ("MCP_BRIDGE_HTTP_JWT_JWKS_URL", &jwks_url),
            ("MCP_BRIDGE_HTTP_RESOURCE_URL", &resource),
            ("MCP_BRIDGE_HTTP_JWT_ALGORITHMS", "ES256,EdDSA"),
            ("MCP_BRIDGE_HTTP_TOKENS_FILE", tokens.to_str().unwrap()),
        ],
    );
    let claims = |changes: Value| {
        let mut claims = json!({
            "iss": ISSUER, "aud": resource, "sub": "alice@example.com",
            "iat": now(), "exp": now() + 300,
        });
        for (name, value) in changes.as_object().unwrap() {
            match value {
                Value::Null => claims.as_object_mut().unwrap().remove(name),
                _ => claims
                    .as_object_mut()
                    .unwrap()
                    .insert(name.clone(), value.clone()),
            };
        }
        claims
    };
    let good = k1.sign("k1", &claims(json!({})));
    assert_eq!(server.initialize_with(&good).0, 200, "a valid token");
    assert_eq!(
        server.initialize_with("ann-token").0,
        200,
        "the tokens file too"
    );
    assert_eq!(
        issuer.fetches(),
        1,
        "the key set is fetched once, then cached"
    );
    let mut public = k1.jwk().to_string().into_bytes();
    public.extend_from_slice(b"\n");
    let forgeries = [
        (
            "expired",
            k1.sign("k1", &claims(json!({"exp": now() - 120}))),
        ),
        (
            "not yet valid",
            k1.sign("k1", &claims(json!({"nbf": now() + 300}))),
        ),
        (
            "another audience",
            k1.sign("k1", &claims(json!({"aud": "http://127.0.0.1:1/mcp"}))),
        ),
        (
            "another issuer",
            k1.sign("k1", &claims(json!({"iss": "https://evil.test/"}))),
        ),
        ("no exp", k1.sign("k1", &claims(json!({"exp": null})))),
        (
            "no principal claim",
            k1.sign("k1", &claims(json!({"sub": null}))),
        ),
        (
            "tampered claims",
            tampered(&good, &claims(json!({"sub": "admin"}))),
        ),
        ("another key's signature", k2.sign("k1", &claims(json!({})))),
        ("alg none", unsigned("k1", &claims(json!({})))),
        (
            "HS256 keyed with the public key",
            sign_hs256("k1", &public, &claims(json!({}))),
        ),
        (
            "HS256 with the set's symmetric key",
            sign_hs256("sym", secret, &claims(json!({}))),
        ),
        (
            "EdDSA under the EC key's kid",
            sign_eddsa("k1", &claims(json!({}))),
        ),
        ("a truncated token", good[..good.len() - 10].to_owned()),
    ];
    for (what, token) in &forgeries {
        let (status, challenge) = server.initialize_with(token);
        assert_eq!(status, 401, "{what}");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
    }
    // A client sending made-up key ids: at most one fetch more, not one each.
    let before = issuer.fetches();
    for n in 0..20 {
        let token = k1.sign(&format!("made-up-{n}"), &claims(json!({})));
        assert_eq!(server.initialize_with(&token).0, 401, "unknown kid {n}");
    }
    assert!(
        issuer.fetches() <= before + 1,
        "{} fetches",
        issuer.fetches()
    );
    // The issuer rotates k2 in: a token under it is served once the
    // refetch interval allows another fetch.
    issuer.publish(vec![k1.jwk(), k2.jwk()]);
    std::thread::sleep(REFETCH_AFTER + Duration::from_millis(500));
    let rotated = k2.sign("k2", &claims(json!({})));
    assert_eq!(server.initialize_with(&rotated).0, 200, "a rotated-in key");
    let metadata = block_on(async {
        http_client()
            .get(format!(
                "http://127.0.0.1:{port}/.well-known/oauth-protected-resource"
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let metadata: Value = serde_json::from_str(&metadata).unwrap();
    assert_eq!(
        metadata["authorization_servers"],
        json!([ISSUER]),
        "{metadata}"
    );
    assert_eq!(metadata["resource"], json!(resource), "{metadata}");
    // Metrics by principal, bounded: every JWT subject is the one label `jwt`.
    let scrape = block_on(async {
        let response = http_client()
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    });
    let requests = |labels: &str| {
        let prefix = format!("mcp_code_exec_http_requests_total{{{labels}}} ");
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|n| n.parse::<u64>().unwrap())
    };
    assert_eq!(
        requests(r#"class="2xx",principal="jwt""#),
        Some(2),
        "{scrape}"
    );
    assert_eq!(
        requests(r#"class="2xx",principal="ann""#),
        Some(1),
        "{scrape}"
    );
    let refused = forgeries.len() as u64 + 20;
    assert_eq!(
        requests(r#"class="4xx",principal="unauthenticated""#),
        Some(refused)
    );
    assert!(!scrape.contains("alice"), "no JWT subject becomes a label");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token removed from the tokens file is refused on its next request,
/// without a restart: in an MCP session it opened too, whether the change is
/// seen by the file's watch or, for an edit that keeps the file's length
/// and modification time (which the watch cannot see), by SIGHUP.
#[test]
fn a_revoked_token_is_refused_on_its_next_request_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("mcp-revoke-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    let line = |name: &str| format!("{name}:{}\n", token_hash(&format!("{name}-token")));
    std::fs::write(&tokens, line("ann") + &line("bob") + &line("cyd")).unwrap();
    let port = free_port();
    let server = HttpServer::start_on(
        port,
        &[("MCP_BRIDGE_HTTP_TOKENS_FILE", tokens.to_str().unwrap())],
    );
    let (status, _, session) = server.post("bob-token", None, INITIALIZE);
    assert_eq!(status, 200);
    let session = session.expect("an MCP session id");
    const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    assert_eq!(
        server.post("bob-token", Some(&session), PING).0,
        200,
        "bob's session serves bob"
    );
    // Bob's line goes: the watch sees the file change.
    std::fs::write(&tokens, line("ann") + &line("cyd")).unwrap();
    crate::util::wait_until("bob's token refused", Duration::from_secs(10), || {
        server.initialize_with("bob-token").0 == 401
    });
    let (status, challenge, _) = server.post("bob-token", Some(&session), PING);
    assert_eq!(status, 401, "nor is bob's open session served");
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert_eq!(
        server.initialize_with("ann-token").0,
        200,
        "ann's line stays"
    );
    // Cyd's line becomes dan's, the file's length and time kept as they were.
    let before = std::fs::metadata(&tokens).unwrap().modified().unwrap();
    std::fs::write(&tokens, line("ann") + &line("dan")).unwrap();
    let file = std::fs::File::options().write(true).open(&tokens).unwrap();
    file.set_modified(before).unwrap();
    drop(file);
    std::thread::sleep(RELOAD_EVERY * 2);
    assert_eq!(
        server.initialize_with("cyd-token").0,
        200,
        "the watch cannot see this edit"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    crate::util::wait_until(
        "cyd's token refused after SIGHUP",
        Duration::from_secs(10),
        || server.initialize_with("cyd-token").0 == 401,
    );
    assert_eq!(
        server.initialize_with("dan-token").0,
        200,
        "dan's line is read"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The official MCP conformance suite (`@modelcontextprotocol/conformance`,
/// pinned in scripts/test.sh, on Node 24) against `serve --http`, every
/// scenario (`--suite all`) for both protocol revisions: every check passes
/// but those of tests/e2e/conformance-baseline.yml (fixture tools and
/// resources, capabilities not declared: README, "Conformance"), and a
/// baselined check that starts passing fails it too.
#[test]
fn the_official_conformance_suite_passes_for_both_revisions() {
    let node = crate::util::node24();
    let suite = node.join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
    let baseline = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/conformance-baseline.yml"
    );
    let server = HttpServer::start_on(free_port(), &[]);
    let results = std::env::temp_dir().join(format!("mcp-conformance-{}", std::process::id()));
    for revision in ["2025-11-25", "2026-07-28"] {
        let output = std::process::Command::new(node.join("node"))
            .arg(&suite)
            .args(["server", "--url", &server.url, "--suite", "all"])
            .args(["--spec-version", revision, "--expected-failures", baseline])
            .arg("-o")
            .arg(results.join(revision))
            .output()
            .expect("Node 24 runs (scripts/test.sh installs it: MCP_CODE_EXEC_TEST_NODE24)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let total = stdout
            .lines()
            .find_map(|line| line.strip_prefix("Total: "))
            .unwrap_or_default();
        assert!(
            output.status.success() && !total.starts_with("0 "),
            "conformance {revision} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        eprintln!("conformance {revision}: {total} checks, each failure one the baseline lists");
    }
    let _ = std::fs::remove_dir_all(&results);
}

engine_test! {
    /// The official TypeScript SDK's streamable-HTTP client
    /// (tests/e2e/http_client_ts.mjs, `@modelcontextprotocol/sdk` on Node 24):
    /// run_python, progress, a cancelled call whose seat is freed, an artifact.
    fn the_official_typescript_sdk_over_streamable_http() {
        let (dir, tokens) = tokens_file("ts-sdk-test", &["ts"]);
        let server = HttpServer::start_on(
            free_port(),
            &[
                ("MCP_BRIDGE_HTTP_TOKENS_FILE", tokens.to_str().unwrap()),
                ("MCP_BRIDGE_MAX_CALLS_PER_CLIENT", "1"),
                ("MCP_BRIDGE_POOL_MIN_IDLE", "1"),
            ],
        );
        let node = crate::util::node24();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/http_client_ts.mjs");
        let output = std::process::Command::new(node.join("node"))
            .arg(script)
            .arg(&server.url)
            .arg("ts-token")
            .arg(node.join("node_modules"))
            .output()
            .expect("Node 24 runs (scripts/test.sh installs it: MCP_CODE_EXEC_TEST_NODE24)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("all typescript sdk checks passed"),
            "http_client_ts.mjs failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Slowloris: clients that open connections and dribble a request head
/// (a byte every 200 ms, never ending it) or send nothing hold nothing for
/// long: other clients are served meanwhile, and every such connection is
/// closed by the server once `HEADER_READ_TIMEOUT` has passed (checked to
/// fail without the timeout: then they are held forever).
#[test]
fn a_client_dribbling_its_headers_is_cut_off_and_others_are_served() {
    use std::io::{Read, Write};
    let server = HttpServer::start_on(free_port(), &[]);
    let address = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned();
    let mut slow: Vec<std::net::TcpStream> = (0..60)
        .map(|n| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            if n % 2 == 0 {
                stream
                    .write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    .unwrap();
            }
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect();
    let started = std::time::Instant::now();
    let mut served = 0;
    let mut open = slow.len();
    while open > 0 && started.elapsed() < HEADER_READ_TIMEOUT * 4 {
        std::thread::sleep(Duration::from_millis(200));
        for stream in &mut slow {
            let _ = stream.write(b"x");
        }
        if served < 5 {
            assert_eq!(
                server.initialize_with("any").0,
                200,
                "another client is served"
            );
            served += 1;
        }
        open = 0;
        for stream in &mut slow {
            let mut bytes = [0u8; 512];
            if let Err(e) = stream.read(&mut bytes)
                && e.kind() == std::io::ErrorKind::WouldBlock
            {
                open += 1;
            }
        }
    }
    assert_eq!(served, 5);
    assert_eq!(
        open,
        0,
        "connections still held after {:?}",
        started.elapsed()
    );
    assert_eq!(server.initialize_with("any").0, 200, "and served after");
}

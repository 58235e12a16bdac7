//! The console and the audit log on a real service: calls of two
//! principals, each seeing only its own beyond loopback; the operator's
//! console on loopback refusing a rebound `Host`; a console beyond loopback
//! without tokens refusing everyone; the live feed; the audit log's lines
//! with the code, the sandbox and a tool call's arguments. The page in a
//! real browser: tests/e2e/console_browser.py.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mcp_code_exec::call::call;
use mcp_code_exec::http::auth::{Auth, token_hash};
use mcp_code_exec::principals::Principal;
use mcp_code_exec::proxy::Proxy;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;
use mcp_code_exec::side_port;
use serde_json::Value;

use crate::util::{block_on, fixture_server, request, test_config, wait_until, warmed};

struct Ports {
    operator: SocketAddr,
    bearer: SocketAddr,
    /// Loopback, with tokens: a token's principal here too.
    bearer_loopback: SocketAddr,
    closed: SocketAddr,
}

/// A folder of this test's own (each test its `name`: they run at once).
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mcp-console-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// GET `path` on `addr` (reached on 127.0.0.1) with `host` and `token`.
fn get(addr: SocketAddr, path: &str, host: &str, token: Option<&str>) -> reqwest::Response {
    let url = format!("http://127.0.0.1:{}{path}", addr.port());
    let mut get = client().get(url).header("host", host);
    if let Some(token) = token {
        get = get.bearer_auth(token);
    }
    block_on(get.send()).unwrap()
}

fn text(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, block_on(response.text()).unwrap())
}

fn ids(list: &str) -> Vec<u64> {
    let list: Value = serde_json::from_str(list).unwrap();
    list["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["id"].as_u64().unwrap())
        .collect()
}

fn run_as(service: &Service, principal: &str, code: &str) {
    let mut request = request(code, Some(60.0));
    request.principal = Principal::new(principal).unwrap();
    request.servers = vec!["fixture-console".into()];
    let report = block_on(call(service, &request));
    assert_eq!(report.status, RunStatus::Success, "{report:#?}");
}

engine_test! {
    fn the_console_shows_each_principal_its_calls_and_the_audit_log_keeps_them() {
        let dir = scratch("principals");
        let mut config = test_config();
        config.audit.path = Some(dir.join("audit.jsonl"));
        config.console_calls = 50;
        let proxy = Proxy::new(vec![fixture_server("fixture-console")]);
        let service = Arc::new(warmed(Service::with_proxy(config, Arc::new(proxy))));
        let tokens = dir.join("tokens");
        std::fs::write(
            &tokens,
            format!("alice:{}\nbob:{}\n", token_hash("alice-token"), token_hash("bob-token")),
        )
        .unwrap();
        let bearer_auth = Auth::Bearer {
            tokens: Some(mcp_code_exec::http::auth::TokensFile::open(&tokens).unwrap()),
            jwt: None,
        };
        let ports = block_on(async {
            let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
            Ports {
                operator: side_port::spawn("127.0.0.1:0".parse().unwrap(), service.clone(), Auth::Local)
                    .await
                    .unwrap(),
                bearer: side_port::spawn(any, service.clone(), bearer_auth.clone()).await.unwrap(),
                bearer_loopback: side_port::spawn("127.0.0.1:0".parse().unwrap(), service.clone(), bearer_auth)
                    .await
                    .unwrap(),
                closed: side_port::spawn(any, service.clone(), Auth::Local).await.unwrap(),
            }
        });

        // The live feed, open before the calls.
        let feed = get(ports.operator, "/api/events", "127.0.0.1", None);
        assert_eq!(feed.status(), 200);
        let mut feed = feed.bytes_stream();

        let hostile = "print('<script>window.x=1</script>')";
        run_as(&service, "alice", hostile);
        run_as(
            &service,
            "bob",
            "print((await mcp_fixture_console.structured(name='bob-argument'))['greeting'])",
        );

        // The feed carried alice's call starting and finishing.
        let mut seen = String::new();
        block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                while !(seen.contains("\"state\":\"finished\"") && seen.contains("bob")) {
                    let chunk = feed.next().await.expect("the feed goes on").unwrap();
                    seen.push_str(&String::from_utf8_lossy(&chunk));
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the feed did not carry both calls: {seen}"))
        });
        assert!(seen.contains("event: call") && seen.contains("\"state\":\"running\""), "{seen}");
        assert!(seen.contains("window.x=1"), "the code's head: {seen}");

        // Loopback: the operator sees both, newest first.
        let (status, list) = text(get(ports.operator, "/api/calls", "localhost:9464", None));
        assert_eq!(status, 200, "{list}");
        let all = ids(&list);
        assert_eq!(all.len(), 2, "{list}");
        assert!(all[0] > all[1]);
        let (alice_id, bob_id) = (all[1], all[0]);
        // A page rebound to another name is refused.
        let (status, _) = text(get(ports.operator, "/api/calls", "evil.example:9464", None));
        assert_eq!(status, 403);
        // The page: escaped, under a strict policy.
        let page = get(ports.operator, "/", "127.0.0.1", None);
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        let (_, html) = text(page);
        assert!(html.contains("&lt;script&gt;window.x=1"), "{html}");
        assert!(!html.contains("<script>window"), "{html}");
        let (status, script) = text(get(ports.operator, "/console.js", "127.0.0.1", None));
        assert_eq!(status, 200);
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser", "eval("] {
            assert!(!script.contains(sink), "the script only sets text, yet uses {sink}");
        }
        // Another site's page is refused, even on loopback.
        let url = format!("http://127.0.0.1:{}/api/calls", ports.operator.port());
        let cross = block_on(client().get(url).header("sec-fetch-site", "cross-site").send()).unwrap();
        assert_eq!(cross.status(), 403);
        // With tokens, loopback asks for one too, and shows its principal's calls only.
        let (status, _) = text(get(ports.bearer_loopback, "/api/calls", "127.0.0.1", None));
        assert_eq!(status, 401);
        let (_, list) = text(get(ports.bearer_loopback, "/api/calls", "127.0.0.1", Some("bob-token")));
        assert_eq!(ids(&list), [bob_id]);

        // Beyond loopback: a token's principal sees its own calls only.
        let (status, _) = text(get(ports.bearer, "/api/calls", "mcp.example", None));
        assert_eq!(status, 401);
        let (status, _) = text(get(ports.bearer, "/api/calls", "mcp.example", Some("nobody")));
        assert_eq!(status, 401);
        let (_, list) = text(get(ports.bearer, "/api/calls", "mcp.example", Some("alice-token")));
        assert_eq!(ids(&list), [alice_id]);
        let bobs = format!("/api/calls/{bob_id}");
        let (status, _) = text(get(ports.bearer, &bobs, "mcp.example", Some("alice-token")));
        assert_eq!(status, 404, "as for a call that does not exist");
        let (status, detail) = text(get(ports.bearer, &bobs, "mcp.example", Some("bob-token")));
        assert_eq!(status, 200);
        let detail: Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(detail["toolCalls"][0]["tool"], "structured");
        assert!(detail["toolCalls"][0]["arguments"].as_str().unwrap().contains("bob-argument"));
        assert_eq!(detail["stdout"], "hello bob-argument\n");
        let (status, status_json) =
            text(get(ports.bearer, "/api/status", "mcp.example", Some("bob-token")));
        assert_eq!(status, 200);
        let status_json: Value = serde_json::from_str(&status_json).unwrap();
        assert!(status_json["pool"]["max"].as_u64().unwrap() >= 1, "{status_json}");
        let sandboxes = status_json["pool"]["sandboxes"].as_array().unwrap();
        assert!(
            sandboxes.iter().any(|s| s["state"] == "idle" && s["runs"].is_number()),
            "{status_json}"
        );
        assert_eq!(status_json["servers"][0]["name"], "fixture-console");
        // One principal's pages cannot take every live feed.
        let feeds: Vec<_> = (0..8)
            .map(|_| get(ports.bearer, "/api/events", "mcp.example", Some("alice-token")))
            .collect();
        assert!(feeds.iter().all(|feed| feed.status() == 200));
        let (status, _) = text(get(ports.bearer, "/api/events", "mcp.example", Some("alice-token")));
        assert_eq!(status, 503, "a ninth page of alice's");
        let bobs_feed = get(ports.bearer, "/api/events", "mcp.example", Some("bob-token"));
        assert_eq!(bobs_feed.status(), 200, "bob's page still gets one");
        drop((feeds, bobs_feed));
        // Beyond loopback without tokens: nobody, and the reason names the variable.
        let (status, body) = text(get(ports.closed, "/api/calls", "mcp.example", None));
        assert_eq!(status, 403);
        assert!(body.contains("MCP_BRIDGE_HTTP_TOKENS_FILE"), "{body}");
        let (status, _) = text(get(ports.closed, "/metrics", "mcp.example", None));
        assert_eq!(status, 200, "metrics stay open to scrapers");

        // The audit log: one line a call, what ran and where.
        let path = dir.join("audit.jsonl");
        let lines = || -> Vec<Value> {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        };
        wait_until("two audit lines", Duration::from_secs(10), || lines().len() >= 2);
        let lines = lines();
        assert_eq!(lines.len(), 2);
        let alice = &lines[0];
        assert_eq!((alice["principal"].as_str(), alice["code"].as_str()), (Some("alice"), Some(hostile)));
        assert_eq!(alice["status"], "success");
        assert!(alice["stdout"]["text"].as_str().unwrap().contains("<script>"));
        assert!(alice["sandbox"].as_str().unwrap().starts_with("mcp-code-exec-"), "{alice}");
        let bob = &lines[1];
        assert_eq!(bob["toolCallsTotal"], 1);
        assert_eq!(bob["toolCalls"][0]["outcome"], "ok");
        assert!(bob["toolCalls"][0]["arguments"].as_str().unwrap().contains("bob-argument"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

engine_test! {
    /// The console in headless Chromium (tests/e2e/console_browser.py,
    /// Selenium with Debian's chromium-driver) while the official SDK runs
    /// calls: the list updates live, a call expands to its code and image,
    /// hostile output is text and runs nothing, a running call shows as
    /// running; screenshots land in target/test-artifacts/console.
    fn the_console_in_a_real_browser() {
        crate::e2e_mcp::sdk_script("console_browser.py", "all console checks passed");
    }
}

engine_test! {
    /// A call whose client goes away mid-run is recorded as `cancelled`
    /// with the tool calls its run had made and its sandbox.
    fn a_cancelled_call_is_recorded_with_what_its_run_had_done() {
        let dir = scratch("cancelled");
        let mut config = test_config();
        config.audit.path = Some(dir.join("audit.jsonl"));
        let proxy = Proxy::new(vec![fixture_server("fixture-console")]);
        let service = Arc::new(warmed(Service::with_proxy(config, Arc::new(proxy))));
        let mut request = request(
            "await mcp_fixture_console.structured(name='before-cancel')\n\
             print('called', flush=True)\nimport time\ntime.sleep(60)",
            Some(90.0),
        );
        request.servers = vec!["fixture-console".into()];
        let running = crate::util::spawn({
            let service = service.clone();
            async move { call(&service, &request).await }
        });
        wait_until("the call runs", Duration::from_secs(30), || {
            service.console().calls_json(&mcp_code_exec::console::Viewer::Operator).contains("\"running\"")
        });
        // Its tool call is made within milliseconds of the start.
        std::thread::sleep(Duration::from_secs(3));
        running.abort();
        let path = dir.join("audit.jsonl");
        wait_until("the cancelled call's line", Duration::from_secs(10), || {
            std::fs::read_to_string(&path).is_ok_and(|text| text.contains("cancelled"))
        });
        let line: Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(line["status"], "cancelled", "{line}");
        assert_eq!(line["toolCallsTotal"], 1, "{line}");
        assert!(line["toolCalls"][0]["arguments"].as_str().unwrap().contains("before-cancel"));
        assert!(line["sandbox"].as_str().unwrap().starts_with("mcp-code-exec-"), "{line}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

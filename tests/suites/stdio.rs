//! The built binary's stdio front door, with a raw client on its stdin and
//! stdout: every line gets an answer (invalid requests, lines that are not
//! JSON, deep nesting, ids reused in flight), no answer is longer than a
//! client reads, a client that stops reading holds no run, and a client of
//! the stateless 2026-07-28 revision may call without `initialize`.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::server::{Server, command};

/// Reads answers until one for every id in `ids` came (and returns them in
/// that order), skipping notifications.
fn answers(server: &mut Server, ids: &[Value]) -> Vec<Value> {
    let mut got: Vec<Option<Value>> = vec![None; ids.len()];
    while got.iter().any(Option::is_none) {
        let line = server.receive();
        assert!(!line.is_empty(), "EOF before answers for {ids:?}: {got:?}");
        let message: Value = serde_json::from_str(&line).expect("every stdout line is JSON-RPC");
        if message.get("method").is_some() {
            continue;
        }
        let slot = ids
            .iter()
            .zip(&mut got)
            .find(|(id, slot)| **id == message["id"] && slot.is_none())
            .unwrap_or_else(|| panic!("an answer nobody waits for: {message}"));
        *slot.1 = Some(message);
    }
    got.into_iter().map(Option::unwrap).collect()
}

fn send_bytes(server: &mut Server, line: &[u8]) {
    let stdin = server.stdin.as_mut().unwrap();
    stdin.write_all(line).unwrap();
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
}

engine_test! {
    /// Invalid requests are answered with their id when it can be read, and
    /// without one otherwise; a line that is not JSON gets -32700 without an id; a
    /// request nested a few hundred levels deep is answered with its id;
    /// an invalid notification is not answered; the server keeps serving.
    /// Before, these were answered without any id, or not at all.
    fn every_line_gets_an_answer() {
        let mut server = Server::start(&[], Stdio::null());
        let _watchdog = server.watchdog(Duration::from_secs(60));
        let deep = format!(
            r#"{{"jsonrpc":"2.0","method":"tools/call","params":{{"name":"run_python","arguments":{{"code":"print(1)"}},"_meta":{{"x":{}1{}}}}},"id":"deep"}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        let lines: Vec<(Vec<u8>, Value, i64)> = vec![
            (br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[1]}"#.to_vec(), json!(1), -32600),
            (br#"{"jsonrpc":"2.0","id":2,"method":7}"#.to_vec(), json!(2), -32600),
            (br#"{"jsonrpc":"1.0","id":"v1","method":"ping"}"#.to_vec(), json!("v1"), -32600),
            (br#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#.to_vec(), Value::Null, -32600),
            (br#"[{"jsonrpc":"2.0","id":4,"method":"ping"}]"#.to_vec(), Value::Null, -32600),
            (b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"ping\",\"params\":{\"x\":\"\xc3\x28\"}}".to_vec(), Value::Null, -32700),
            (br#"{"jsonrpc":"2.0","id":6,"method":"ping","params":{"x":"\udc00"}}"#.to_vec(), Value::Null, -32700),
            (br#"{"jsonrpc":"2.0","id":7,"method":"tools/li"#.to_vec(), Value::Null, -32700),
            (deep.into_bytes(), json!("deep"), -32600),
        ];
        for (line, _, _) in &lines {
            send_bytes(&mut server, line);
        }
        // Not answered (a notification), and no reason to stop reading.
        server.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":[]}"#);
        server.send(r#"{"jsonrpc":"2.0","id":"last","method":"ping"}"#);
        // The null-id answers come in any order among themselves: read them
        // by id, nulls in turn.
        let ids: Vec<Value> = lines.iter().map(|(_, id, _)| id.clone()).collect();
        let mut want: Vec<Value> = ids.clone();
        want.push(json!("last"));
        let got = answers(&mut server, &want);
        let mut codes: Vec<(String, i64)> = got[..lines.len()]
            .iter()
            .map(|a| (a["id"].to_string(), a["error"]["code"].as_i64().unwrap_or(0)))
            .collect();
        let mut expected: Vec<(String, i64)> =
            lines.iter().map(|(_, id, code)| (id.to_string(), *code)).collect();
        codes.sort();
        expected.sort();
        assert_eq!(codes, expected, "{got:#?}");
        for answer in &got[..lines.len()] {
            // MCP 2026-07-28 (and rmcp's type): an id that cannot be read is
            // left out of the answer, JSON-RPC's `null` otherwise.
            assert!(answer.get("id") != Some(&Value::Null), "{answer}");
        }
        let deep = got.iter().find(|a| a["id"] == "deep").unwrap();
        assert!(
            deep["error"]["message"].as_str().unwrap().contains("nests 303 levels"),
            "{deep}"
        );
        assert_eq!(got[lines.len()]["result"], json!({}), "and the server serves on");
        let result = server.run_python(json!({"code": "print(6*7)"}));
        assert_eq!(result["stdout"], "42\n", "{result}");
    }
}

engine_test! {
    /// Two requests in flight with the same id: the second is refused with
    /// an error carrying the id, the first is answered; once answered, the
    /// id may be used again. Before, one of the two was never answered.
    fn a_reused_id_in_flight_gets_an_error_and_the_first_its_answer() {
        let mut server = Server::start(&[], Stdio::null());
        let _watchdog = server.watchdog(Duration::from_secs(90));
        let call = |code: &str| {
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                   "params": {"name": "run_python", "arguments": {"code": code}}})
            .to_string()
        };
        server.send(&call("import time\ntime.sleep(2)\nprint('first')"));
        server.send(&call("print('second')"));
        let [one, two]: [Value; 2] = answers(&mut server, &[json!(7), json!(7)])
            .try_into()
            .unwrap();
        assert_eq!(one["error"]["code"], -32600, "the duplicate first: {one}");
        assert!(
            one["error"]["message"]
                .as_str()
                .unwrap()
                .contains("already in flight"),
            "{one}"
        );
        assert_eq!(two["result"]["structuredContent"]["stdout"], "first\n", "{two}");
        server.send(&call("print('again')"));
        let [again]: [Value; 1] = answers(&mut server, &[json!(7)]).try_into().unwrap();
        assert_eq!(again["result"]["structuredContent"]["stdout"], "again\n", "{again}");
    }
}

engine_test! {
    /// A client that stops reading stdout while a run with progress goes
    /// on: the answer of another call fills the pipe, so the progress note
    /// cannot be written. The run still ends at its timeout (its duration
    /// says so, well before the client reads again), and the server answers
    /// once the client reads. Before, the run was frozen until the note was
    /// written, its deadline with it.
    fn a_client_that_stops_reading_holds_no_run() {
        let mut server = Server::start(&[("MCP_BRIDGE_POOL_MIN_IDLE", "2")], Stdio::null());
        let _watchdog = server.watchdog(Duration::from_secs(150));
        let warm = server.run_python(json!({"code": "print(1)"}));
        assert_eq!(warm["stdout"], "1\n", "{warm}");
        server.send(
            &json!({"jsonrpc": "2.0", "id": "slow", "method": "tools/call", "params": {
                "name": "run_python",
                "arguments": {"code": "import time\nprint('tick', flush=True)\ntime.sleep(120)", "timeout": 8},
                "_meta": {"progressToken": "p"}}})
            .to_string(),
        );
        // 4 MiB of answer: more than the pipe and tokio's stdout buffer hold.
        server.send(
            &json!({"jsonrpc": "2.0", "id": "big", "method": "tools/call", "params": {
                "name": "run_python",
                "arguments": {"code": "import sys\nsys.stdout.write('x' * (1 << 20))\nsys.stderr.write('y' * (1 << 20))"}}})
            .to_string(),
        );
        let stall = Duration::from_secs(30);
        std::thread::sleep(stall);
        let [slow, big]: [Value; 2] = answers(&mut server, &[json!("slow"), json!("big")])
            .try_into()
            .unwrap();
        assert_eq!(big["result"]["structuredContent"]["stdoutTruncated"], false);
        let report = &slow["result"]["structuredContent"];
        assert_eq!(report["status"], "timeout", "{report}");
        let duration = report["durationMs"].as_f64().unwrap();
        assert!(
            duration < stall.as_secs_f64() * 1000.0 - 10_000.0,
            "the 8 s run took {duration} ms: it waited for the client to read"
        );
    }
}

engine_test! {
    /// The worst case for the size of a result: both streams at their cap
    /// (1 MiB), all control characters (6 bytes each when escaped, and each
    /// stream is both in the text and in `structuredContent`: 24 MiB as
    /// is). The answer is one line under the 16 MiB a client reads, and
    /// says what it left out.
    fn the_largest_result_fits_in_one_message() {
        let mut server = Server::start(&[], Stdio::null());
        let _watchdog = server.watchdog(Duration::from_secs(90));
        server.send(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "run_python",
                "arguments": {"code": "import sys\nsys.stdout.write('\\x01' * (1 << 20))\nsys.stderr.write('\\x02' * (1 << 20))"}}})
            .to_string(),
        );
        let line = server.receive();
        eprintln!("the answer is {} bytes", line.len());
        assert!(line.len() <= 16 << 20, "{} bytes", line.len());
        let answer: Value = serde_json::from_str(&line).unwrap();
        let report = &answer["result"]["structuredContent"];
        assert_eq!(report["status"], "success", "{report}");
        assert_eq!(report["stdoutTruncated"], true);
        let stdout = report["stdout"].as_str().unwrap();
        assert!(stdout.len() > 256 << 10 && stdout.bytes().all(|b| b == 1));
        assert!(
            report["notes"].to_string().contains("stdout and stderr are cut short"),
            "{report}"
        );
    }
}

engine_test! {
    /// MCP 2026-07-28 has no `initialize`: each request carries the
    /// protocol version and the client's capabilities in `_meta`. rmcp
    /// serves such a request as the first message; one without them gets
    /// an error with its id. A notification before any of it (rmcp would
    /// end the connection on one) is dropped, and `server/discover`,
    /// `tools/list` and `tools/call` are all served.
    fn a_stateless_client_calls_without_initialize() {
        let mut child = command()
            .arg("serve")
            .env("MCP_BRIDGE_METRICS_ADDR", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut send = |message: Value| {
            writeln!(stdin, "{message}").unwrap();
            stdin.flush().unwrap();
        };
        send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}));
        let mut ask = |request: Value| {
            send(request);
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
        };
        let bare = ask(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        assert_eq!(bare["id"], 1, "{bare}");
        assert!(bare["error"]["message"].as_str().is_some(), "{bare}");
        let meta = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": {}
        });
        let discovered = ask(json!({"jsonrpc": "2.0", "id": 2, "method": "server/discover", "params": {"_meta": meta}}));
        assert_eq!(discovered["id"], 2, "{discovered}");
        assert!(discovered["result"].is_object(), "{discovered}");
        let listed = ask(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": meta}}));
        assert_eq!(listed["result"]["tools"][0]["name"], "run_python", "{listed}");
        let called = ask(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "_meta": meta, "name": "run_python", "arguments": {"code": "print(6*7)"}
        }}));
        assert_eq!(called["id"], 4, "{called}");
        assert!(called["result"]["content"][0]["text"].as_str().is_some_and(|t| t.contains("42")), "{called}");
        drop(stdin);
        let _ = child.wait();
    }
}

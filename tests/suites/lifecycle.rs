//! The serving binary from start to exit among its neighbours: shutdown
//! with a run and a session in flight, a client that never reads its
//! stderr, and the orphan sweep of one instance beside the live containers
//! of another.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::server::{BINARY, Server, empty_home, run_binary};
use crate::util::{block_on, docker, docker_ps, test_config, wait_until};
use mcp_code_exec::engine::Engine;

/// Every container this program made, any instance's: (id, owner label).
fn managed_containers() -> Vec<(String, String)> {
    let listed = docker_ps(&[
        "-a",
        "--no-trunc",
        "--filter",
        "label=mcp-code-exec.managed=true",
        "--format",
        "{{.ID}} {{.Label \"mcp-code-exec.owner\"}}",
    ]);
    listed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(id, owner)| (id.to_owned(), owner.to_owned()))
        .collect()
}

/// The pid an owner label names (`…/pid/start/instance`).
fn labelled_pid(owner: &str) -> Option<&str> {
    owner.rsplit('/').nth(2)
}

/// The containers of `server`'s process, as the engine lists them.
fn containers_of(server: &Server) -> Vec<String> {
    let pid = server.child.id().to_string();
    managed_containers()
        .into_iter()
        .filter(|(_, owner)| labelled_pid(owner) == Some(&pid))
        .map(|(id, _)| id)
        .collect()
}

/// Starts a server with a stateless run and a session call in flight (each
/// has printed and sleeps for a minute), stops it with `stop`, and checks
/// that every container of it is gone within 5 s, then that it exits.
fn shutdown_with_work_in_flight(stop: impl FnOnce(&mut Server)) {
    let mut server = Server::start(
        &[
            ("MCP_BRIDGE_POOL_MIN_IDLE", "2"),
            ("MCP_BRIDGE_PRELOAD", "none"),
        ],
        Stdio::null(),
    );
    let _watchdog = server.watchdog(Duration::from_secs(90));
    let code = "import time\nprint('in flight', flush=True)\ntime.sleep(60)";
    for (id, session) in [(101, None), (102, Some("kept"))] {
        let call = serde_json::json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {
                "name": "run_python",
                "arguments": {"code": code, "timeout": 100, "session": session},
                "_meta": {"progressToken": id},
            },
        });
        server.send(&call.to_string());
    }
    // Each run's progress notes (every 4 s) carry its last line: both run.
    let mut running = std::collections::BTreeSet::new();
    while running.len() < 2 {
        let message: serde_json::Value = serde_json::from_str(&server.receive()).unwrap();
        let params = &message["params"];
        if message["method"] == "notifications/progress" && params["message"] == "in flight" {
            running.insert(params["progressToken"].to_string());
        }
    }
    assert!(!containers_of(&server).is_empty());
    stop(&mut server);
    wait_until(
        "every container of the server to be removed",
        Duration::from_secs(5),
        || containers_of(&server).is_empty(),
    );
    server.wait_exit(Duration::from_secs(8));
    assert_eq!(
        containers_of(&server),
        Vec::<String>::new(),
        "none came after"
    );
}

engine_test! {
    fn stdin_eof_with_a_run_and_a_session_in_flight_removes_every_container_within_5_s() {
        shutdown_with_work_in_flight(|server| drop(server.stdin.take()));
    }
}

engine_test! {
    fn sigterm_with_a_run_and_a_session_in_flight_removes_every_container_within_5_s() {
        shutdown_with_work_in_flight(|server| {
            let pid = server.child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        });
    }
}

engine_test! {
    /// Two instances with the same hostname, one in a pid namespace of its
    /// own (a dev container with `--network host`, a fixed `--hostname`):
    /// the other's orphan sweep at launch leaves the first one's containers
    /// alone, while it still removes a leftover of its own place whose
    /// process is gone. Needs root (`unshare --pid`), as CI has.
    fn the_orphan_sweep_leaves_a_live_instance_in_another_pid_namespace_alone() {
        let mut inner = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", BINARY, "serve"])
            .env("HOME", empty_home())
            .current_dir(empty_home())
            .env("MCP_BRIDGE_METRICS_ADDR", "off")
            .env("MCP_BRIDGE_POOL_MIN_IDLE", "1")
            .env("MCP_BRIDGE_PRELOAD", "none")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) runs");
        // The first process of a new pid namespace is pid 1 there.
        let inner_container = || {
            managed_containers()
                .into_iter()
                .find(|(_, owner)| labelled_pid(owner) == Some("1"))
        };
        wait_until("the inner instance's sandbox", Duration::from_secs(60), || {
            inner_container().is_some()
        });
        let (inner_id, inner_owner) = inner_container().unwrap();

        // A leftover of this place (as an instance started here labels it)
        // whose process is gone: the sweep removes it, which says it ran.
        let (image, probe) = block_on(async {
            let engine = Engine::connect(test_config().engine).await.unwrap();
            let image = engine.resolve_image("mcp-code-exec-sandbox:trixie").await.unwrap();
            (image, engine.owner_label())
        });
        let place = probe.rsplitn(4, '/').last().unwrap();
        let dead = docker(&[
            "run", "-d", "--network", "none",
            "--label", "mcp-code-exec.managed=true",
            "--label", &format!("mcp-code-exec.owner={place}/4000000/1/0"),
            &image, "sleep", "300",
        ]);
        assert!(!dead.is_empty(), "could not start a fake leftover container");
        let outer = run_binary(&["run"], "print(1)", &[("MCP_BRIDGE_PRELOAD", "none")]);
        assert_eq!(String::from_utf8_lossy(&outer.stdout), "1\n");
        wait_until("the dead instance's leftover is removed", Duration::from_secs(15), || {
            docker_ps(&["-aq", "--filter", &format!("id={dead}")]).is_empty()
        });
        let survivors = managed_containers();
        drop(inner.stdin.take());
        let _ = inner.wait();
        assert!(
            survivors.iter().any(|(id, _)| *id == inner_id),
            "the live inner instance ({inner_owner}) kept its sandbox {inner_id}: {survivors:?}"
        );
    }
}

engine_test! {
    /// Logging never waits for stderr: with every crate logging at trace
    /// into a pipe nobody reads (it fills at 64 KiB), calls keep being
    /// answered. Before, the first worker to log into the full pipe blocked,
    /// then every worker did, and the server answered nothing more.
    fn a_client_that_never_reads_stderr_still_gets_answers() {
        let mut server = Server::start(
            &[("MCP_BRIDGE_LOG_LEVEL", "trace,mcp_code_exec=trace")],
            Stdio::piped(),
        );
        // Held, never read: the pipe stays open and fills.
        let _stderr = server.child.stderr.take();
        let _watchdog = server.watchdog(Duration::from_secs(60));
        for i in 0..60 {
            let result = server.run_python(serde_json::json!({"code": format!("print({i})")}));
            assert_eq!(result["stdout"], format!("{i}\n"), "call {i}: {result}");
        }
    }
}

//! Pool lifecycle against the real engine: concurrency and queueing, reuse
//! limits, cancellation, orphan cleanup and shutdown.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    AGENT_START, engine_tests_enabled, request, run_on, runtime, started_backend, test_config,
};
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::runtime::Runtime;

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn container_exists(id: &str) -> bool {
    !docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")]).is_empty()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn calls_beyond_capacity_queue_and_all_succeed() {
    if !engine_tests_enabled() {
        return;
    }
    let mut config = test_config();
    config.pool_max = 2;
    let backend = started_backend(config);
    let reports = runtime().block_on(async {
        let calls = (0..6).map(|i| {
            let backend = &backend;
            async move {
                backend
                    .execute(&request(
                        &format!("import time\ntime.sleep(0.2)\nprint({i})"),
                        None,
                    ))
                    .await
            }
        });
        futures_util::future::join_all(calls).await
    });
    for (i, report) in reports.iter().enumerate() {
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.stdout, format!("{i}\n"));
    }
    let status = runtime()
        .block_on(backend.executor())
        .unwrap()
        .pool()
        .status();
    assert!(
        status.total <= 2,
        "never more than MCP_BRIDGE_POOL_MAX containers: {status:?}"
    );
    runtime().block_on(backend.shutdown());
}

#[test]
fn a_full_pool_fails_with_a_clear_error_after_the_wait() {
    if !engine_tests_enabled() {
        return;
    }
    let mut config = test_config();
    config.pool_max = 1;
    config.pool_wait_timeout = Duration::from_millis(500);
    let backend = started_backend(config);
    let (slow, queued) = runtime().block_on(async {
        let sleeper = request("import time\ntime.sleep(3)", None);
        let slow = backend.execute(&sleeper);
        let queued = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            backend.execute(&request("print(1)", None)).await
        };
        tokio::join!(slow, queued)
    });
    assert_eq!(slow.status, RunStatus::Success);
    assert_eq!(queued.status, RunStatus::Error);
    let error = queued.error.unwrap();
    assert!(
        error.contains("no sandbox became free") && error.contains("MCP_BRIDGE_POOL_MAX"),
        "{error}"
    );
    runtime().block_on(backend.shutdown());
}

#[test]
fn sandboxes_are_reused_then_recycled_after_max_uses() {
    if !engine_tests_enabled() {
        return;
    }
    let mut config = test_config();
    config.pool_max = 1;
    config.pool_max_uses = 2;
    let backend = started_backend(config);
    let starts: Vec<String> = (0..3)
        .map(|_| run_on(&backend, AGENT_START, None).stdout)
        .collect();
    assert_eq!(starts[0], starts[1], "second run reuses the container");
    assert_ne!(
        starts[1], starts[2],
        "third run gets a new one after MCP_BRIDGE_POOL_MAX_USES=2"
    );
    runtime().block_on(backend.shutdown());
}

#[test]
fn a_timed_out_sandbox_is_replaced() {
    if !engine_tests_enabled() {
        return;
    }
    let mut config = test_config();
    config.pool_max = 1;
    let backend = started_backend(config);
    let before = run_on(&backend, AGENT_START, None).stdout;
    let timed_out = run_on(&backend, "while True: pass", Some(0.5));
    assert_eq!(timed_out.status, RunStatus::Timeout);
    let after = run_on(&backend, AGENT_START, None).stdout;
    assert_ne!(before, after, "the timed-out container was recycled");
    runtime().block_on(backend.shutdown());
}

#[test]
fn a_cancelled_run_destroys_its_sandbox() {
    if !engine_tests_enabled() {
        return;
    }
    let backend = started_backend(test_config());
    let pool = runtime()
        .block_on(backend.executor())
        .unwrap()
        .pool()
        .clone();
    let id = runtime().block_on(async {
        let mut lease = pool.acquire().await.unwrap();
        let id = lease.sandbox().id().to_owned();
        let mut output = Default::default();
        let run = lease.sandbox().run(
            "import time\ntime.sleep(60)",
            1024,
            Duration::from_secs(90),
            None,
            &mut output,
        );
        // The client gives up: the run future and then the lease are dropped.
        let cancelled = tokio::time::timeout(Duration::from_millis(300), run).await;
        assert!(cancelled.is_err());
        id
    });
    wait_until(
        "the cancelled sandbox's container is removed",
        Duration::from_secs(15),
        || !container_exists(&id),
    );
    runtime().block_on(backend.shutdown());
}

#[test]
fn leftovers_of_dead_instances_are_removed_at_startup_and_own_ones_at_shutdown() {
    if !engine_tests_enabled() {
        return;
    }
    let (image, probe_owner) = runtime().block_on(async {
        let runtime = Runtime::connect(test_config().runtime).await.unwrap();
        let image = runtime.resolve_image(&test_config().image).await.unwrap();
        (image, runtime.owner_label())
    });
    // An orphan: this host, a pid that is not running with that start time.
    let host = probe_owner.split('/').next().unwrap();
    let dead_owner = format!("mcp-code-exec.owner={host}/4000000/1/0");
    let alive_elsewhere = "mcp-code-exec.owner=some-other-host/1/1/0".to_owned();
    let mut leftovers = Vec::new();
    for owner_label in [&dead_owner, &alive_elsewhere] {
        let id = docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            "mcp-code-exec.managed=true",
            "--label",
            owner_label,
            &image,
            "sleep",
            "300",
        ]);
        assert!(!id.is_empty(), "could not start a fake leftover container");
        leftovers.push(id);
    }
    let backend = started_backend(test_config());
    wait_until(
        "the dead instance's container is removed",
        Duration::from_secs(15),
        || !container_exists(&leftovers[0]),
    );
    assert!(
        container_exists(&leftovers[1]),
        "containers of other hosts are left alone"
    );
    docker(&["rm", "-f", &leftovers[1]]);

    let report = run_on(&backend, "print('ok')", None);
    assert_eq!(report.status, RunStatus::Success);
    let owner = runtime()
        .block_on(backend.executor())
        .unwrap()
        .pool()
        .runtime()
        .owner_label();
    let mine = || {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=mcp-code-exec.owner={owner}"),
        ])
    };
    assert!(!mine().is_empty(), "the pool holds warm containers");
    let started = Instant::now();
    runtime().block_on(backend.shutdown());
    assert!(started.elapsed() < Duration::from_secs(6));
    wait_until(
        "every container of this instance is gone",
        Duration::from_secs(5),
        || mine().is_empty(),
    );
}

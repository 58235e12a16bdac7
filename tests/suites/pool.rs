//! Pool lifecycle against the real engine: concurrency and queueing, reuse
//! limits, cancellation, orphan cleanup and shutdown, container counts
//! during bursts, and what a caller sees when the engine goes away or no
//! sandbox can start.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::util::forwarder::EngineForwarder;
use crate::util::server::{Server, free_port, http_get};
use crate::util::{
    AGENT_START, block_on, containers_of, docker, docker_ps, one_sandbox, request, run_on, spawn,
    started_service, test_config, under_test, wait_until,
};
use mcp_code_exec::call::Limits;
use mcp_code_exec::call::call;
use mcp_code_exec::engine::Engine;
use mcp_code_exec::pool::{AcquireError, Pool};
use mcp_code_exec::report::RunStatus;
use serde_json::json;

/// Runs `work`, sampling all through it what the engine has of `pool`'s
/// containers (`docker ps -a --filter label=…`): its result and the peak.
/// The work starts once a first sample is in (a slow engine's listing,
/// Podman's under load, could otherwise let the work end unsampled); a list
/// the engine fails is sampled again, and no first sample within a minute
/// fails the test with the engine's last error (it never waits forever).
fn peak_containers_during<T>(pool: &Pool, work: impl Future<Output = T>) -> (T, usize) {
    let peak = Arc::new(AtomicUsize::new(0));
    let sampled = Arc::new(tokio::sync::Notify::new());
    let last_error = Arc::new(std::sync::Mutex::new(None));
    let sampler = spawn({
        let (pool, peak, sampled) = (pool.clone(), peak.clone(), sampled.clone());
        let last_error = last_error.clone();
        async move {
            loop {
                match pool.engine().list_owned().await {
                    Ok(owned) => {
                        peak.fetch_max(owned.len(), Ordering::Relaxed);
                        sampled.notify_one();
                    }
                    Err(error) => *last_error.lock().unwrap() = Some(error.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let result = block_on(async {
        match tokio::time::timeout(Duration::from_secs(60), sampled.notified()).await {
            Ok(()) => Some(work.await),
            Err(_) => None,
        }
    });
    sampler.abort();
    let Some(result) = result else {
        let error = last_error.lock().unwrap().take();
        panic!("the engine listed no containers within 60 s; last error: {error:?}");
    };
    (result, peak.load(Ordering::Relaxed))
}

fn container_exists(id: &str) -> bool {
    !docker_ps(&["-aq", "--no-trunc", "--filter", &format!("id={id}")]).is_empty()
}

engine_test! {
    fn calls_beyond_capacity_queue_and_all_succeed() {
        let mut config = test_config();
        config.pool_max = 2;
        let service = started_service(config);
        let pool = block_on(service.pool()).unwrap().clone();
        let (reports, peak) = peak_containers_during(&pool, async {
            let calls = (0..6).map(|i| {
                let service = &service;
                async move {
                    call(
                        service,
                        &request(&format!("import time\ntime.sleep(0.2)\nprint({i})"), None),
                    )
                    .await
                }
            });
            futures_util::future::join_all(calls).await
        });
        for (i, report) in reports.iter().enumerate() {
            assert_eq!(report.status, RunStatus::Success, "{report:#?}");
            assert_eq!(report.stdout, format!("{i}\n"));
        }
        assert!(
            (1..=2).contains(&peak),
            "never more than MCP_BRIDGE_POOL_MAX=2 containers (counted through the engine): {peak}"
        );
        block_on(service.shutdown());
    }
}

engine_test! {
    fn a_full_pool_fails_with_a_clear_error_after_the_wait() {
        let mut config = one_sandbox();
        config.pool_wait_timeout = Duration::from_millis(500);
        let service = started_service(config);
        let (slow, queued) = block_on(async {
            let sleeper = request("import time\ntime.sleep(3)", None);
            let slow = call(&service, &sleeper);
            let queued = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                call(&service, &request("print(1)", None)).await
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
        block_on(service.shutdown());
    }
}

engine_test! {
    fn sandboxes_are_reused_then_recycled_after_max_uses() {
        let mut config = one_sandbox();
        config.pool_max_uses = 2;
        let service = started_service(config);
        run_on(&service, "pass", None);
        let first = containers_of(&service);
        assert_eq!(first.len(), 1, "{first:?}");
        // Listed while the second run sleeps: once it is over, its worn-out
        // container can be gone already (Podman removes it within ms).
        let during_second = std::thread::scope(|scope| {
            let second = scope.spawn(|| run_on(&service, "import time\ntime.sleep(1)", None));
            std::thread::sleep(Duration::from_millis(300));
            let listed = containers_of(&service);
            assert_eq!(second.join().unwrap().status, RunStatus::Success);
            listed
        });
        assert_eq!(during_second, first, "second run reuses the container");
        run_on(&service, "pass", None);
        let third = containers_of(&service);
        assert!(
            third.iter().any(|id| *id != first[0]),
            "third run gets a new one after MCP_BRIDGE_POOL_MAX_USES=2: {third:?}"
        );
        wait_until("the worn-out container to go", Duration::from_secs(20), || {
            !containers_of(&service).contains(&first[0])
        });
        block_on(service.shutdown());
    }
}

engine_test! {
    fn a_timed_out_sandbox_is_replaced() {
        let service = started_service(one_sandbox());
        run_on(&service, "pass", None);
        let before = containers_of(&service);
        let timed_out = run_on(&service, "while True: pass", Some(0.5));
        assert_eq!(timed_out.status, RunStatus::Timeout);
        run_on(&service, "pass", None);
        wait_until("the timed-out container to go", Duration::from_secs(20), || {
            !containers_of(&service).contains(&before[0])
        });
        assert_eq!(containers_of(&service).len(), 1, "a new one took its place");
        block_on(service.shutdown());
    }
}

engine_test! {
    fn a_cancelled_run_destroys_its_sandbox() {
        let service = started_service(test_config());
        let pool = block_on(service.pool()).unwrap().clone();
        let id = block_on(async {
            let mut lease = pool.acquire().await.unwrap();
            let id = lease.sandbox().id().to_owned();
            let mut output = Default::default();
            let limits = Limits::from(&test_config());
            let input = limits.input("import time\ntime.sleep(60)", &[]);
            let run = lease
                .sandbox()
                .run(&input, Duration::from_secs(90), Default::default(), &mut output);
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
        block_on(service.shutdown());
    }
}

engine_test! {
    /// Self-removing containers (as sandboxes are) whose PID 1 exits on its
    /// own pass through a state Podman's list reports as `stopped` (~100 ms
    /// here), which its client cannot read, and then vanish mid-list: a
    /// listing (at launch, at shutdown, in this suite's sampler) tries again
    /// instead of failing. Another instance's containers (another host's
    /// owner label, so no sweep touches them) exit one after another, at
    /// moments set before any starts (5 s ahead: starts slower than that
    /// fail the test, saying so), while this one lists every 10 ms; that
    /// they are gone after proves they ran.
    fn a_listing_reads_through_containers_exiting_on_their_own() {
        let engine = block_on(Engine::connect(test_config().engine)).unwrap();
        let image = block_on(engine.resolve_image(&test_config().image)).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let first_exit = now + Duration::from_secs(5);
        let exiting: Vec<String> = (0..4u32)
            .map(|n| {
                let exit_at = (first_exit + Duration::from_millis(200) * n).as_secs_f64();
                let wait = format!("import time; time.sleep(max(0, {exit_at} - time.time()))");
                let id = docker(&[
                    "run",
                    "-d",
                    "--rm",
                    "--network",
                    "none",
                    // Podman's default limits exceed what this host allows.
                    "--ulimit",
                    "nofile=1024:1024",
                    "--ulimit",
                    "nproc=4096:4096",
                    "--label",
                    "mcp-code-exec.managed=true",
                    "--label",
                    "mcp-code-exec.owner=some-other-host/1/1/0",
                    &image,
                    "python3",
                    "-c",
                    &wait,
                ]);
                assert!(!id.is_empty(), "could not start a container that exits");
                id
            })
            .collect();
        let listed = block_on(async {
            let mut listed = 0;
            // Until a second after the last exit.
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            assert!(
                since_epoch + Duration::from_millis(500) < first_exit,
                "the four containers took over 4.5 s to start: nothing would be listed while they exit"
            );
            let until = Instant::now()
                + (first_exit + Duration::from_millis(1600)).saturating_sub(since_epoch);
            while Instant::now() < until {
                engine.list_owned().await?;
                listed += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, mcp_code_exec::engine::EngineError>(listed)
        });
        let gone = exiting.iter().all(|id| !container_exists(id));
        let mut removal = vec!["rm", "-f"];
        removal.extend(exiting.iter().map(String::as_str));
        docker(&removal);
        let listed = listed.unwrap_or_else(|error| panic!("a listing failed: {error}"));
        assert!(listed > 10, "only {listed} listings");
        assert!(gone, "the containers did not run and exit when they should");
    }
}

engine_test! {
    fn leftovers_of_dead_instances_are_removed_at_startup_and_own_ones_at_shutdown() {
        let (image, probe_owner) = block_on(async {
            let engine = Engine::connect(test_config().engine).await.unwrap();
            let image = engine.resolve_image(&test_config().image).await.unwrap();
            (image, engine.owner_label())
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
        let service = started_service(test_config());
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

        let report = run_on(&service, "print('ok')", None);
        assert_eq!(report.status, RunStatus::Success);
        let owner = block_on(service.pool())
            .unwrap()
            .engine()
            .owner_label();
        let mine = || {
            docker_ps(&[
                "-aq",
                "--filter",
                &format!("label=mcp-code-exec.owner={owner}"),
            ])
        };
        assert!(!mine().is_empty(), "the pool holds warm containers");
        let started = Instant::now();
        block_on(service.shutdown());
        assert!(started.elapsed() < Duration::from_secs(6));
        wait_until(
            "every container of this instance is gone",
            Duration::from_secs(5),
            || mine().is_empty(),
        );
    }
}

engine_test! {
    fn a_burst_starts_no_container_it_does_not_need() {
        let mut config = test_config();
        config.pool_min_idle = 1;
        config.pool_max = 6;
        let service = started_service(config);
        let pool = block_on(service.pool()).unwrap().clone();
        let (one, two) = (request("print(1)", None), request("print(2)", None));
        let ((), peak) = peak_containers_during(&pool, async {
            for _ in 0..25 {
                let (a, b) = tokio::join!(call(&service, &one), call(&service, &two));
                assert_eq!(
                    (a.status, b.status),
                    (RunStatus::Success, RunStatus::Success)
                );
            }
        });
        // Two calls in flight plus one idle spare: sandboxes in reset come back
        // in milliseconds and must not be replaced by new containers.
        assert!(
            peak <= 3,
            "the engine held {peak} containers of this pool for 2 calls in flight and min idle 1"
        );
        block_on(service.shutdown());
    }
}

engine_test! {
    fn the_age_sweep_keeps_the_warmest_sandbox_on_top() {
        let mut config = test_config();
        config.pool_min_idle = 2;
        // The sweep runs every max_age / 4 = 2 s.
        config.pool_max_age = Duration::from_secs(8);
        let service = started_service(config);
        let pool = block_on(service.pool()).unwrap().clone();
        // A first run takes one of the two spares: refill starts a third. Once
        // it is idle, nothing else starts for one run at a time.
        run_on(&service, "pass", None);
        wait_until("three idle sandboxes", Duration::from_secs(30), || {
            pool.status().idle == 3
        });
        let first = run_on(&service, AGENT_START, None).stdout;
        std::thread::sleep(Duration::from_millis(2500));
        let second = run_on(&service, AGENT_START, None).stdout;
        assert_eq!(
            first, second,
            "after a sweep, the most recently used sandbox still goes out first"
        );
        block_on(service.shutdown());
    }
}

engine_test! {
    fn containers_are_named_after_their_server() {
        let service = started_service(test_config());
        let owner = block_on(service.pool())
            .unwrap()
            .engine()
            .owner_label();
        let names = docker_ps(&[
            "-a",
            "--filter",
            &format!("label=mcp-code-exec.owner={owner}"),
            "--format",
            "{{.Names}}",
        ]);
        let pid = std::process::id();
        assert!(!names.is_empty());
        for name in names.lines() {
            assert!(
                name.starts_with("mcp-code-exec-") && name.contains(&format!("-{pid}-")),
                "{name}"
            );
        }
        block_on(service.shutdown());
    }
}

engine_test! {
    fn sandboxes_that_cannot_start_are_reported_at_once_with_the_cause() {
        let mut config = test_config();
        config.pool_wait_timeout = Duration::from_secs(30);
        block_on(async {
            let engine = Engine::connect(config.engine).await.unwrap();
            // Every start fails: the engine refuses to create the container.
            let pool = Pool::start(engine, &config, "mcp-code-exec-test-no-such-image:none");
            for attempt in 0..2 {
                let started = Instant::now();
                let Err(error) = pool.acquire().await else {
                    panic!("a sandbox of a missing image started");
                };
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "attempt {attempt}: answered after {:?}: {error}",
                    started.elapsed()
                );
                assert!(matches!(error, AcquireError::Unavailable(_)), "{error}");
                let message = error.to_string();
                assert!(
                    message.starts_with("no sandbox can be started")
                        && message.contains("mcp-code-exec-test-no-such-image"),
                    "{message}"
                );
                assert_eq!(pool.status().total, 0, "a failed start holds no slot");
                let left = pool.engine().list_owned().await.unwrap();
                assert_eq!(left, Vec::<String>::new(), "a failed start leaves no container");
            }
            pool.shutdown().await;
        });
    }
}

engine_test! {
    fn a_lost_engine_is_reported_at_once_and_the_pool_recovers_by_itself() {
        let dir =
            std::env::temp_dir().join(format!("mcp-code-exec-engine-loss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("engine.sock");
        let mut engine = EngineForwarder::start(&socket);
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let address = engine.address();
        let mut server = Server::start(
            &[
                ("DOCKER_HOST", address.as_str()),
                (
                    "MCP_BRIDGE_RUNTIME",
                    if under_test().podman { "podman" } else { "docker" },
                ),
                ("MCP_BRIDGE_METRICS_ADDR", addr.as_str()),
                ("MCP_BRIDGE_POOL_MIN_IDLE", "1"),
                ("MCP_BRIDGE_POOL_MAX", "2"),
            ],
            Stdio::null(),
        );
        let ready = || http_get(port, "/readyz").is_some_and(|(status, _)| status == 200);
        let print = json!({"code": "print(6*7)"});
        assert_eq!(server.run_python(print.clone())["stdout"], "42\n");
        wait_until("ready", Duration::from_secs(60), ready);

        engine.cut();
        // Let the cut reach the idle sandbox's open attach stream (a run already
        // under way would fail as "the sandbox agent stopped", which is true too).
        std::thread::sleep(Duration::from_millis(500));
        for attempt in 0..2 {
            let started = Instant::now();
            let report = server.run_python(print.clone());
            let error = report["error"].as_str().unwrap_or_default();
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "attempt {attempt}: answered after {:?} (the pool wait is 30 s): {error}",
                started.elapsed()
            );
            assert_eq!(report["status"], "error", "{report}");
            assert!(
                error.starts_with("no sandbox can be started: no container engine answers")
                    && error.contains(&address),
                "the real cause, with the engine's address: {error}"
            );
        }
        let (status, reason) = http_get(port, "/readyz").unwrap();
        assert_eq!(status, 503);
        assert!(
            reason.contains("no container engine answers") && reason.contains(&address),
            "{reason}"
        );
        // The dead sandbox's container could not be removed: it still counts.
        let metrics = http_get(port, "/metrics").unwrap().1;
        assert!(
            !metrics.contains("mcp_code_exec_sandboxes{state=\"removing\"} 0"),
            "{metrics}"
        );

        engine.restore();
        wait_until(
            "ready again, without a restart",
            Duration::from_secs(30),
            ready,
        );
        assert_eq!(server.run_python(print)["stdout"], "42\n");
        wait_until(
            "the refused removal to be retried",
            Duration::from_secs(15),
            || {
                http_get(port, "/metrics")
                    .unwrap()
                    .1
                    .contains("mcp_code_exec_sandboxes{state=\"removing\"} 0")
            },
        );
        drop(server);
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

engine_test! {
    /// Fair queueing: while one principal has 16 calls queued for a pool of
    /// two, another's call gets the next free sandbox (it holds none), so it
    /// ends among the first calls, not after the flood.
    fn one_principals_flood_does_not_starve_another() {
        let mut config = test_config();
        config.pool_max = 2;
        config.pool_min_idle = 2;
        config.max_sessions = 0;
        let service = Arc::new(started_service(config));
        let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
        let run = |principal: &'static str, code: &'static str| {
            let (service, finished) = (service.clone(), finished.clone());
            spawn(async move {
                let mut request = request(code, Some(60.0));
                request.principal = mcp_code_exec::principals::Principal::new(principal).unwrap();
                let report = call(&service, &request).await;
                assert_eq!(report.status, RunStatus::Success, "{report:?}");
                finished.lock().unwrap().push(principal);
            })
        };
        let flood: Vec<_> = (0..16)
            .map(|_| run("flood", "import time; time.sleep(0.4)"))
            .collect();
        wait_until("the flood queues", Duration::from_secs(30), || {
            service.started_pool().unwrap().status().waiting >= 14
        });
        let other = run("other", "print(6*7)");
        block_on(async {
            other.await.unwrap();
            for call in flood {
                call.await.unwrap();
            }
        });
        let order = finished.lock().unwrap().clone();
        let position = order.iter().position(|p| *p == "other").unwrap();
        assert!(
            position <= 4,
            "the other principal's call ended as number {position} of 17: {order:?}"
        );
    }
}

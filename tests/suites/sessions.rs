//! Sessions (issue 12), through the library against the real engine: what a
//! session keeps, what each of its calls returns, the order of its calls, and
//! every way it ends (the interpreter dying during or between calls, a
//! cancelled call, a request) with the next call saying so. The official
//! SDK's view (limit, idle expiry, timeout) is tests/e2e/sessions.py.

use std::sync::Arc;
use std::time::Duration;

use crate::util::{
    Shared, block_on, docker, docker_ps, fixture_server, spawn, started_service, test_config,
    wait_until,
};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::proxy::Proxy;
use mcp_code_exec::report::{Found, RunReport, RunStatus};
use mcp_code_exec::service::Service;

/// Room for every session of the suite's tests at once (they run in
/// parallel, and a failing one leaves its sessions behind).
static SERVICE: Shared = Shared::with(|| {
    let mut config = test_config();
    config.pool_max = 10;
    config.max_sessions = 9;
    // gVisor counts its own kernel's memory in the container's: an 8 MiB
    // answer carried into a session's next call took 256 MiB there.
    config.memory_bytes = 512 << 20;
    let proxy = Proxy::new(vec![fixture_server("fixture")]);
    Service::with_proxy(config, Arc::new(proxy))
});

fn in_session(service: &Service, name: &str, code: &str) -> RunReport {
    block_on(call(service, &session_request(name, code)))
}

fn session_request(name: &str, code: &str) -> CallRequest {
    CallRequest {
        code: code.into(),
        timeout_secs: Some(20.0),
        session: Some(name.into()),
        ..CallRequest::default()
    }
}

fn found(report: &RunReport) -> &Found {
    &report
        .session
        .as_ref()
        .expect("a session call says how it found it")
        .found
}

fn ended(report: &RunReport) -> Option<&str> {
    report.session.as_ref().and_then(|s| s.ended.as_deref())
}

fn end(service: &Service, name: &str) -> RunReport {
    block_on(call(
        service,
        &CallRequest {
            end_session: true,
            ..session_request(name, "")
        },
    ))
}

/// Prints the id of the container a call ran in (Docker and Podman both
/// mount its hostname file from a folder named after it), then its
/// interpreter's pid.
const CONTAINER_AND_PID: &str = "import os, re\n\
    print(re.search(r'containers/([0-9a-f]{64})/', open('/proc/self/mountinfo').read()).group(1))\n\
    print(os.getpid())";

/// The container id and the interpreter's pid a call printed (`CONTAINER_AND_PID`).
fn container_and_pid(report: &RunReport) -> (String, String) {
    match report.stdout.split_whitespace().collect::<Vec<_>>()[..] {
        [id, pid] if id.len() == 64 => (id.to_owned(), pid.to_owned()),
        _ => panic!("no container id and pid: {report:#?}"),
    }
}

/// Kills process `pid` of container `id` from outside the session (through
/// the engine: `docker exec`), and waits until it is gone (reaped).
fn kill_in(id: &str, pid: &str) {
    let python = |code: &str| docker(&["exec", id, "python3", "-c", code, pid]);
    python("import os, sys\nos.kill(int(sys.argv[1]), 9)");
    wait_until(
        "the killed interpreter to be reaped",
        Duration::from_secs(20),
        || python("import os, sys\nprint(os.path.exists('/proc/' + sys.argv[1]))") == "False",
    );
}

/// Shuts a test's own service down however the test ends (a session's
/// sandbox dropped outside the executor, as a panic would, cannot be removed).
struct ShutDown<'a>(&'a Service);

impl Drop for ShutDown<'_> {
    fn drop(&mut self) {
        block_on(self.0.shutdown());
    }
}

/// Waits until the engine no longer has container `id`.
fn wait_gone(what: &str, id: &str) {
    wait_until(what, Duration::from_secs(20), || {
        docker_ps(&["-aq", "--no-trunc", "--filter", &format!("id={id}")]).is_empty()
    });
}

engine_test! {
    /// What a session keeps, and that a stateless call and another session
    /// see none of it while it lives (each has a container of its own);
    /// that its container serves no one after it ends is
    /// `a_sessions_container_is_never_reused_however_it_ends`.
    fn state_persists_in_a_session_and_nowhere_else() {
        let service = SERVICE.get();
        let first = in_session(
            service,
            "keep",
            "import json\nx = 1\nlog = open('/workspace/log.txt', 'w')\nlog.write('a')\nlog.flush()",
        );
        assert_eq!((first.status, found(&first)), (RunStatus::Success, &Found::New), "{first:#?}");
        let second = in_session(service, "keep", "x += 1\nlog.write('b')\nlog.flush()\nprint(x, json.dumps(x))");
        assert_eq!(second.stdout, "2 2\n", "{second:#?}");
        assert_eq!(found(&second), &Found::Continued);
        let third = in_session(service, "keep", "x += 1\nprint(x, open('log.txt').read())");
        assert_eq!(third.stdout, "3 ab\n", "{third:#?}");
        let probe = "import os\nprint('x' in globals(), 'json' in globals(), os.path.exists('/workspace/log.txt'))";
        let stateless = crate::util::run_on(service, probe, Some(20.0));
        assert_eq!(stateless.stdout, "False False False\n", "{stateless:#?}");
        assert!(stateless.session.is_none());
        let other = in_session(service, "other", probe);
        assert_eq!(other.stdout, "False False False\n", "{other:#?}");
        assert_eq!(found(&other), &Found::New);
        for name in ["keep", "other"] {
            assert!(ended(&end(service, name)).is_some());
        }
    }
}

engine_test! {
    /// A call's result holds its own output, images and files, not those
    /// of the calls before it; earlier functions keep their source lines.
    fn each_call_returns_only_its_own_output_images_and_files() {
        let service = SERVICE.get();
        let first = in_session(
            service,
            "own",
            "import os, matplotlib.pyplot as plt\nos.makedirs('out', exist_ok=True)\n\
             open('out/a.txt', 'w').write('A')\nplt.plot([1, 2])\nprint('one')\n\
             def fails():\n    return 1 / 0\n",
        );
        assert_eq!(first.stdout, "one\n", "{first:#?}");
        assert_eq!((first.images.len(), first.files.len()), (1, 1), "{first:#?}");
        let second = in_session(service, "own", "open('out/b.txt', 'w').write('B')\nprint('two')\nfails()");
        assert_eq!(second.stdout, "two\n", "{second:#?}");
        assert!(second.images.is_empty(), "the figure was shown (and closed) by the first call");
        let files: Vec<_> = second.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(files, ["b.txt"], "out/a.txt did not change");
        assert_eq!(second.status, RunStatus::Error);
        assert!(
            second.stderr.contains("return 1 / 0") && second.stderr.contains("line 3, in <module>"),
            "both calls' lines in the traceback: {}",
            second.stderr
        );
        let third = in_session(service, "own", "print('three')\nimport sys\nsys.exit(4)");
        assert_eq!((third.stdout.as_str(), third.exit_code), ("three\n", Some(4)));
        assert_eq!(ended(&third), None, "an exception or sys.exit() ends the call, not the session");
        let fourth = in_session(service, "own", "print(open('out/a.txt').read())");
        assert_eq!((found(&fourth), fourth.stdout.as_str()), (&Found::Continued, "A\n"));
        end(service, "own");
    }
}

engine_test! {
    /// Calls that arrive while the session is busy run after it in the
    /// order they arrived (100 ms apart; at the same instant they have none).
    fn calls_to_one_session_run_in_arrival_order() {
        let service = SERVICE.get();
        in_session(service, "queue", "order = []");
        let calls: Vec<_> = (0..8)
            .map(|i| {
                // The first holds the session while the others arrive.
                let code = if i == 0 { "import time\ntime.sleep(1.5)\norder.append(0)".to_owned() } else { format!("order.append({i})") };
                let request = session_request("queue", &code);
                let handle = spawn(async move { call(SERVICE.get(), &request).await });
                std::thread::sleep(Duration::from_millis(100));
                handle
            })
            .collect();
        for handle in calls {
            let report = block_on(handle).unwrap();
            assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        }
        let order = in_session(service, "queue", "print(order)");
        assert_eq!(order.stdout, "[0, 1, 2, 3, 4, 5, 6, 7]\n", "{order:#?}");
        end(service, "queue");
    }
}

engine_test! {
    /// An interpreter that exits during a call ends its session; one that
    /// dies between calls (killed from outside: nothing of the session runs
    /// then) is found dead, and the next call's code runs in a new session
    /// that says the old one was lost.
    fn a_dead_interpreter_ends_the_session_and_the_next_call_says_so() {
        let service = SERVICE.get();
        in_session(service, "dies", "x = 1");
        let exit = in_session(service, "dies", "import os\nprint('bye', flush=True)\nos._exit(3)");
        assert_eq!((exit.stdout.as_str(), exit.exit_code), ("bye\n", Some(3)), "{exit:#?}");
        let why = ended(&exit).expect("the session ended");
        assert!(why.contains("exited during a call (exit code 3)"), "{why}");
        let next = in_session(service, "dies", "print('x' in globals())");
        assert_eq!(next.stdout, "False\n");
        assert!(matches!(found(&next), Found::Lost(why) if why.contains("exit code 3")), "{next:#?}");

        let (id, pid) = container_and_pid(&in_session(service, "dies", &format!("x = 1\n{CONTAINER_AND_PID}")));
        kill_in(&id, &pid);
        let after = in_session(service, "dies", "print('x' in globals())");
        assert_eq!((after.status, after.stdout.as_str()), (RunStatus::Success, "False\n"), "{after:#?}");
        assert_eq!(
            found(&after),
            &Found::Lost("its interpreter exited between calls (killed by SIGKILL (killed))".into())
        );
        end(service, "dies");
    }
}

engine_test! {
    /// A session whose container died while it was idle (killed through the
    /// engine) is found so by its next call, which runs in a new session
    /// and says the state was lost.
    fn a_session_whose_container_died_is_lost_and_its_next_call_runs() {
        let service = SERVICE.get();
        let (id, _) = container_and_pid(&in_session(service, "killed", &format!("x = 1\n{CONTAINER_AND_PID}")));
        docker(&["kill", &id]);
        wait_gone("the killed container to go", &id);
        let next = in_session(service, "killed", "print('x' in globals())");
        assert_eq!((next.status, next.stdout.as_str()), (RunStatus::Success, "False\n"), "{next:#?}");
        assert!(
            matches!(found(&next), Found::Lost(why) if why.contains("its sandbox stopped between calls")),
            "{next:#?}"
        );
        end(service, "killed");
    }
}

engine_test! {
    /// Nothing of a session runs between its calls: a thread spinning on
    /// the CPU gets no CPU time while the session waits 4 s (compared with
    /// what it gets in a second of the next call, on the same machine: a
    /// thread that ran would get four times that; the ends of the two calls
    /// around the wait, slow under gVisor, count in the 1/4 allowed).
    fn a_sessions_threads_do_not_run_between_calls() {
        let service = SERVICE.get();
        let spin = "import threading, time\n\
            def spin():\n    while True:\n        pass\n\
            threading.Thread(target=spin, daemon=True).start()\n\
            time.sleep(0.2)\nended = time.process_time()";
        let started = in_session(service, "spins", spin);
        assert_eq!(started.status, RunStatus::Success, "{started:#?}");
        std::thread::sleep(Duration::from_secs(4));
        let measure = "between = time.process_time() - ended\n\
            start = time.process_time()\ntime.sleep(1)\nduring = time.process_time() - start\n\
            print(between < during, f'{between:.3f} s in 4 s between calls, {during:.3f} s in a second of a call')";
        let measured = in_session(service, "spins", measure);
        assert!(measured.stdout.starts_with("True "), "{measured:#?}");
        end(service, "spins");
    }
}

engine_test! {
    /// The MCP servers a session's calls name work in every call (one
    /// channel to the agent for the session's life), and many calls' code
    /// fills nothing up.
    fn tool_calls_and_many_calls_in_one_session() {
        let service = SERVICE.get();
        for i in 0..3 {
            let request = CallRequest {
                servers: vec!["fixture".into()],
                ..session_request(
                    "tools",
                    &format!("print((await mcp_fixture.structured(name='n{i}'))['greeting'])"),
                )
            };
            let report = block_on(call(service, &request));
            assert_eq!(report.stdout, format!("hello n{i}\n"), "call {i}: {report:#?}");
        }
        // 40 calls of 200 KB of code: 8 MB, more than /run/code holds.
        let padding = format!("# {}\n", "x".repeat(200_000));
        for i in 0..40 {
            let report = in_session(service, "tools", &format!("{padding}n = {i}\nprint(n)"));
            assert_eq!(report.stdout, format!("{i}\n"), "call {i}: {report:#?}");
        }
        let traceback = in_session(service, "tools", "def f():\n    raise ValueError('deep')\nf()");
        assert!(
            traceback.stderr.contains("raise ValueError('deep')"),
            "a later call's lines come from memory: {}",
            traceback.stderr
        );
        end(service, "tools");
    }
}

engine_test! {
    /// A call that ends while an answer is half written to its interpreter
    /// (8 MiB into a 64 KiB pipe that nobody reads: the call asked by hand)
    /// leaves the answer pipe whole: the next call's tool calls work.
    fn a_call_ended_mid_answer_leaves_the_next_calls_tool_calls_working() {
        let service = SERVICE.get();
        let with_fixture = |code: &str| CallRequest {
            servers: vec!["fixture".into()],
            ..session_request("cut", code)
        };
        let cut = "import os, select\nchannel = runtime._channel\n\
            os.write(channel._out, b'{\"id\":900001,\"server\":\"fixture\",\"tool\":\"big\",\"arguments\":{\"mib\":8}}\\n')\n\
            print(select.select([channel._in], [], [], 15)[0] != [])";
        let report = block_on(call(service, &with_fixture(cut)));
        assert_eq!(report.stdout, "True\n", "the answer began: {report:#?}");
        for i in 0..2 {
            let next = block_on(call(
                service,
                &with_fixture(&format!("print((await mcp_fixture.structured(name='n{i}'))['greeting'])")),
            ));
            assert_eq!((next.status, next.stdout.as_str()), (RunStatus::Success, format!("hello n{i}\n").as_str()), "{next:#?}");
        }
        end(service, "cut");
    }
}

engine_test! {
    /// A session's container is destroyed, never reset for another call,
    /// however the session ends: a call timed out, its interpreter exited in
    /// a call, or died between calls (the session then goes on in a new
    /// container). Cancelled calls and end_session: the test after this one.
    fn a_sessions_container_is_never_reused_however_it_ends() {
        let service = SERVICE.get();
        let (id, _) = container_and_pid(&in_session(service, "ends", CONTAINER_AND_PID));
        let timed_out = block_on(call(
            service,
            &CallRequest {
                timeout_secs: Some(1.0),
                ..session_request("ends", "import time\ntime.sleep(30)")
            },
        ));
        assert_eq!(timed_out.status, RunStatus::Timeout, "{timed_out:#?}");
        wait_gone("the container of a session whose call timed out to go", &id);

        let (id, _) = container_and_pid(&in_session(service, "ends", CONTAINER_AND_PID));
        let exited = in_session(service, "ends", "import os\nos._exit(3)");
        assert!(ended(&exited).is_some(), "{exited:#?}");
        wait_gone("the container of a session whose interpreter exited to go", &id);

        let (id, pid) = container_and_pid(&in_session(service, "ends", CONTAINER_AND_PID));
        kill_in(&id, &pid);
        let restarted = in_session(service, "ends", CONTAINER_AND_PID);
        assert!(matches!(found(&restarted), Found::Lost(_)), "{restarted:#?}");
        assert_ne!(container_and_pid(&restarted).0, id, "{restarted:#?}");
        wait_gone("the container of a session whose interpreter died between calls to go", &id);
        end(service, "ends");
    }
}

engine_test! {
    /// A session whose restart finds no sandbox (a pool of one: the dead
    /// interpreter's is still being removed; no wait) fails that call; the
    /// call after still says the state was lost, and why.
    fn a_restart_without_a_sandbox_keeps_why_the_session_was_lost() {
        let mut config = test_config();
        config.pool_min_idle = 1;
        config.pool_max = 1;
        config.max_sessions = 1;
        config.pool_wait_timeout = Duration::from_millis(1);
        let service = started_service(config);
        let _down = ShutDown(&service);
        let (id, pid) = container_and_pid(&in_session(&service, "alone", &format!("x = 1\n{CONTAINER_AND_PID}")));
        kill_in(&id, &pid);
        let failed = in_session(&service, "alone", "print(1)");
        assert_eq!(failed.status, RunStatus::Error, "{failed:#?}");
        assert!(failed.error.as_deref().unwrap_or_default().contains("no sandbox"), "{failed:#?}");
        let warm = block_on(async { service.pool().await.unwrap().wait_warm(Duration::from_secs(60)).await });
        assert!(warm, "the pool's sandbox came back");
        let next = in_session(&service, "alone", "print('x' in globals())");
        assert_eq!((next.status, next.stdout.as_str()), (RunStatus::Success, "False\n"), "{next:#?}");
        assert_eq!(
            found(&next),
            &Found::Lost("its interpreter exited between calls (killed by SIGKILL (killed))".into()),
        );
    }
}

engine_test! {
    /// User code owns its session's process, status pipe included: closing
    /// it or writing garbage there ends the session, never hangs the call.
    fn a_tampered_status_pipe_ends_the_session_at_once() {
        let service = SERVICE.get();
        for (what, tamper) in [
            ("closed", "import os\nos.closerange(3, 256)"),
            (
                "garbage",
                "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'\\xff' * 8)\n    \
                 except OSError:\n        pass\nimport time\ntime.sleep(5)",
            ),
        ] {
            in_session(service, "tamper", "x = 1");
            let report = block_on(call(
                service,
                &CallRequest {
                    timeout_secs: Some(60.0),
                    ..session_request("tamper", tamper)
                },
            ));
            assert_ne!(report.status, RunStatus::Timeout, "{what}: {report:#?}");
            let why = ended(&report).unwrap_or_default();
            assert!(why.contains("exited during a call"), "{what}: {report:#?}");
        }
        end(service, "tamper");
    }
}

engine_test! {
    /// Cancelling a call (dropping it mid-run) ends its session and destroys
    /// its container; so does end_session. Calls after say what happened.
    fn a_cancelled_call_or_an_ended_session_takes_its_container_along() {
        let service = SERVICE.get();
        let (id, _) = container_and_pid(&in_session(service, "gone", CONTAINER_AND_PID));
        let cut = block_on(async {
            tokio::time::timeout(
                Duration::from_millis(500),
                call(service, &session_request("gone", "import time\ntime.sleep(30)")),
            )
            .await
        });
        assert!(cut.is_err(), "the call was cut");
        wait_gone("the cancelled session's container to go", &id);
        let next = in_session(service, "gone", CONTAINER_AND_PID);
        assert_eq!(found(&next), &Found::Lost("a call in it was cancelled mid-run".into()));
        let (id, _) = container_and_pid(&next);
        let done = end(service, "gone");
        assert_eq!(done.status, RunStatus::Success);
        assert_eq!(ended(&done), Some("ended as asked (end_session)"));
        wait_gone("the ended session's container to go", &id);
        let again = in_session(service, "gone", "print(1)");
        assert_eq!(found(&again), &Found::New, "a session ended on request is not lost");
        let nothing = end(service, "nobody");
        assert_eq!(nothing.notes, ["no live session is named \"nobody\": nothing to end"]);
        end(service, "gone");
    }
}

engine_test! {
    fn sessions_can_be_turned_off() {
        let mut config = test_config();
        config.max_sessions = 0;
        let service = started_service(config);
        let report = in_session(&service, "s", "print(1)");
        assert_eq!(report.status, RunStatus::Error);
        assert_eq!(
            report.error.as_deref(),
            Some("sessions are off (MCP_BRIDGE_MAX_SESSIONS=0): run without `session`")
        );
    }
}

#[test]
fn session_names_and_end_session_are_checked() {
    let limits = mcp_code_exec::call::Limits::from(&test_config());
    let check = |session: Option<&str>, end_session: bool, code: &str| {
        let request = CallRequest {
            code: code.into(),
            session: session.map(Into::into),
            end_session,
            ..CallRequest::default()
        };
        limits.validate(&request, &[]).map(|_| ())
    };
    assert!(check(Some("eda_2-b"), false, "x").is_ok());
    assert!(check(Some("s"), true, "").is_ok(), "ending needs no code");
    let long = "n".repeat(65);
    for bad in ["", "a b", "a/b", "é", long.as_str()] {
        let error = check(Some(bad), false, "x").unwrap_err();
        assert!(
            error.contains("1 to 64 letters, digits, '_' or '-'"),
            "{bad:?}: {error}"
        );
    }
    let error = check(None, true, "x").unwrap_err();
    assert!(error.contains("end_session needs the session"), "{error}");
    assert!(
        check(Some("s"), false, " ")
            .unwrap_err()
            .contains("code is empty")
    );
}

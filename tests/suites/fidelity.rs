//! A run behaves like `python3 script.py` (issue 8), and nothing of one run
//! reaches the next: not its memory, not what it did to the processes it
//! could see. Against the real engine.

use std::sync::Arc;

use crate::util::{
    AGENT_START, Shared, block_on, fixture_server, one_sandbox, request, run_on, started_service,
    warmed,
};
use mcp_code_exec::call::call;
use mcp_code_exec::proxy::Proxy;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

static SERVICE: Shared = Shared::new();

engine_test! {
    fn user_functions_and_classes_pickle_and_multiprocessing_works() {
        let code = r#"
import concurrent.futures, multiprocessing, pickle

class Point:
    def __init__(self, x):
        self.x = x

def square(x):
    return x * x

if __name__ == "__main__":
    print(pickle.loads(pickle.dumps(Point(3))).x, pickle.loads(pickle.dumps(square))(4))
    with multiprocessing.Pool(2) as pool:
        print(pool.map(square, range(5)))
    with concurrent.futures.ProcessPoolExecutor(2) as executor:
        print(list(executor.map(square, range(3))))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print(pool.map(square, [7]))
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.stdout, "3 16\n[0, 1, 4, 9, 16]\n[0, 1, 4]\n[49]\n");
    }
}

engine_test! {
    fn what_the_zygote_held_is_immortal_and_what_a_run_makes_is_counted() {
        // PEP 683: the zygote makes what it holds immortal before it forks,
        // so a run's reads of it write no reference count (no page copied).
        // The run's own objects are counted and freed as usual.
        // (The images' Python is 3.13: a build the agent does not know,
        // such as 3.14, keeps its counts, and this test says so.)
        let code = r#"import json, sys, weakref
IMMORTAL = sys.getrefcount(None)
print(sys.getrefcount(json) == IMMORTAL, sys.getrefcount(json.dumps) == IMMORTAL)
class Mine:
    pass
mine = Mine()
alias = mine
print(sys.getrefcount(mine) < 10)
gone = weakref.ref(Mine())
print(gone() is None)
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.stdout, "True True\nTrue\nTrue\n");
        // The preloaded zygote's own pass: numpy comes from its preload.
        let data = SERVICE.run(
            "import numpy, sys\nprint(sys.getrefcount(numpy) == sys.getrefcount(None), numpy.ones(3).sum())",
        );
        assert_eq!(data.status, RunStatus::Success, "{data:#?}");
        assert_eq!(data.stdout, "True 3.0\n");
    }
}

engine_test! {
    fn tracebacks_warnings_and_inspect_show_the_source() {
        let code = r#"import inspect, warnings

def divide(a, b):
    return a / b

print(inspect.getsource(divide).splitlines()[0])
warnings.warn("careful")
warnings.warn("old api", DeprecationWarning)
divide(1, 0)
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Error, "{report:#?}");
        assert_eq!(report.stdout, "def divide(a, b):\n");
        let stderr = &report.stderr;
        for expected in [
            "main.py:7: UserWarning: careful\n  warnings.warn(\"careful\")\n",
            // The interpreter shows DeprecationWarnings raised in __main__.
            "main.py:8: DeprecationWarning: old api\n",
            "Traceback (most recent call last):\n  File \"/run/code/main.py\", line 9, in <module>\n    divide(1, 0)\n",
            "line 4, in divide\n    return a / b\n",
            "ZeroDivisionError: division by zero",
        ] {
            assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
        }
        assert!(
            !stderr.contains("agent"),
            "no frame of ours is shown:\n{stderr}"
        );
    }
}

engine_test! {
    fn a_run_ends_like_the_interpreter_threads_then_atexit() {
        let code = r#"
import atexit, sys, threading, time
atexit.register(lambda: print("atexit ran", flush=True))
def late():
    time.sleep(0.3)
    print("thread finished")
threading.Thread(target=late).start()
threading.Thread(target=lambda: sys.exit(5)).start()   # ends its thread only
print("main done")
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.stdout, "main done\nthread finished\natexit ran\n");

        let exit = SERVICE.run("import atexit, sys\natexit.register(print, 'cleanup')\nsys.exit(3)");
        assert_eq!(exit.exit_code, Some(3), "{exit:#?}");
        assert_eq!(exit.stdout, "cleanup\n");

        // python3 waits for a non-daemon thread forever; a run waits until its deadline.
        let never = run_on(
            SERVICE.get(),
            "import threading, time\nthreading.Thread(target=time.sleep, args=(1000,)).start()\nprint('main done')",
            Some(2.0),
        );
        assert_eq!(never.status, RunStatus::Timeout, "{never:#?}");
        assert_eq!(never.stdout, "main done\n");
    }
}

engine_test! {
    fn script_details_match_python3_script_py() {
        let code = r#"
import asyncio, os, signal, sys
print(__name__, __file__, __spec__, sys.argv, sys.path[:2], os.getcwd())
print(sys.modules["__main__"] is sys.modules[__name__], open(__file__).read().splitlines()[1])
async def answer():
    return 42
print(asyncio.run(answer()))
signal.signal(signal.SIGALRM, lambda *_: print("alarm"))
signal.setitimer(signal.ITIMER_REAL, 0.05)
signal.pause()
sys.excepthook = lambda kind, value, tb: print("hooked", kind.__name__, value)
raise ValueError("boom")
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Error, "{report:#?}");
        assert_eq!(
            report.stdout,
            "__main__ /run/code/main.py None ['/run/code/main.py'] ['/run/code', '/run/packages/lib/python3.13/site-packages'] /workspace\n\
         True import asyncio, os, signal, sys\n42\nalarm\nhooked ValueError boom\n"
        );
        assert_eq!(report.exit_code, Some(1));
    }
}

engine_test! {
    /// The property of the fork tree: a token that run N held in its code, its
    /// output and a proxied tool's answer is nowhere in run N+1's memory, on the
    /// same container. The scanning code holds the token's two halves apart, so
    /// it cannot find itself.
    fn nothing_of_a_run_remains_in_the_next_runs_memory() {
        let config = one_sandbox();
        let proxy = Proxy::new(vec![fixture_server("fixture")]);
        let service = Service::with_proxy(config, Arc::new(proxy));
        let service = warmed(service);

        let nonce = std::process::id() ^ 0x5eed_cafe;
        let (head, tail) = (format!("RESIDUE-{nonce:08x}"), "-TOKEN-of-run-N");
        let token = format!("{head}{tail}");
        let plant = format!(
            "import sys\ntoken = {token:?}\nprint(token)\nprint(token, file=sys.stderr)\n\
         answer = await mcp_fixture.structured(name=token)\nprint(token in answer['greeting'])\n{AGENT_START}"
        );
        let mut planted = request(&plant, Some(20.0));
        planted.servers = vec!["fixture".into()];
        let planted = block_on(call(&service, &planted));
        assert_eq!(planted.status, RunStatus::Success, "{planted:#?}");
        assert!(planted.stdout.starts_with(&format!("{token}\nTrue\n")));

        let scan = format!(
            r#"
head, tail = bytes.fromhex("{}"), bytes.fromhex("{}")
found = 0
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
    for line in maps.read().splitlines():
        span, perms = line.split()[:2]
        if not perms.startswith("r"):
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        try:
            mem.seek(start)
            data = mem.read(end - start)
        except (OSError, ValueError, OverflowError):
            continue
        at = data.find(head)
        while at >= 0:
            found += data[at + len(head):at + len(head) + len(tail)] == tail
            at = data.find(head, at + 1)
print(found)
{AGENT_START}"#,
            hex(head.as_bytes()),
            hex(tail.as_bytes())
        );
        let scanned = run_on(&service, &scan, Some(20.0));
        assert_eq!(scanned.status, RunStatus::Success, "{scanned:#?}");
        let (found, agent) = scanned.stdout.split_once('\n').unwrap();
        assert_eq!(
            planted.stdout.lines().last(),
            agent.lines().next(),
            "both runs used the same container"
        );
        assert_eq!(found, "0", "copies of run N's token in run N+1's memory");
        block_on(service.shutdown());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

engine_test! {
    /// What user code (same uid) can change from outside about the agent (PID 1)
    /// and the zygotes (the processes runs are forked from: the run's parent,
    /// and the other one): each change is detected at reset, so the next run
    /// sees all three as at start.
    fn changes_to_the_agent_or_zygote_do_not_reach_later_runs() {
        let service = started_service(one_sandbox());
        let look = r#"
import ctypes, os, resource
libc = ctypes.CDLL(None, use_errno=True)
OTHER_ZYGOTE
for pid in (0, 1, os.getppid(), other):
    print(pid and "pid", os.sched_getscheduler(pid), os.sched_getparam(pid).sched_priority,
          libc.syscall(252, 1, pid), os.getpriority(os.PRIO_PROCESS, pid),
          resource.prlimit(pid, resource.RLIMIT_NOFILE), sorted(os.sched_getaffinity(pid)))
"#;
        // The agent's other child: the zygote that did not fork this run.
        let other = "other = next(int(p) for p in os.listdir('/proc') if p.isdigit() \
            and int(p) != os.getppid() and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1] == '1')";
        let look = look.replace("OTHER_ZYGOTE", other);
        let look = look.as_str();
        let clean = run_on(&service, look, Some(10.0));
        assert_eq!(clean.status, RunStatus::Success, "{clean:#?}");
        let tampers = [
            "os.sched_setscheduler(TARGET, os.SCHED_IDLE, os.sched_param(0))",
            "os.sched_setscheduler(TARGET, os.SCHED_BATCH, os.sched_param(0))",
            "assert libc.syscall(251, 1, TARGET, 3 << 13) == 0, 'ioprio_set'",
            "os.setpriority(os.PRIO_PROCESS, TARGET, 19)",
            "resource.prlimit(TARGET, resource.RLIMIT_NOFILE, (64, 64))",
            "os.sched_setaffinity(TARGET, {0})",
        ];
        for target in ["1", "os.getppid()", "other"] {
            for tamper in tampers {
                let code = format!(
                    "import ctypes, os, resource\nlibc = ctypes.CDLL(None, use_errno=True)\n{other}\n{}\nprint('done')",
                    tamper.replace("TARGET", target)
                );
                let report = run_on(&service, &code, Some(10.0));
                assert_eq!(report.stdout, "done\n", "{code}\n{report:#?}");
                let after = run_on(&service, look, Some(10.0));
                assert_eq!(after.stdout, clean.stdout, "after {target}: {tamper}");
            }
        }
    }
}

engine_test! {
    fn primitive_results_of_fastmcp_tools_are_unwrapped() {
        let proxy = Proxy::new(vec![fixture_server("fixture")]);
        let config = one_sandbox();
        let service = warmed(Service::with_proxy(config, Arc::new(proxy)));
        let code = r#"
pid = await mcp_fixture.pid()
print(type(pid).__name__, (await runtime.call_tool_raw("fixture", "pid"))["structuredContent"] == {"result": pid})
print(await mcp_fixture.structured(name="x"))
print(len(await mcp_fixture.big(mib=1)))
"#;
        let mut unwrapping = request(code, Some(20.0));
        unwrapping.servers = vec!["fixture".into()];
        let report = block_on(call(&service, &unwrapping));
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(
            report.stdout,
            "int True\n{'greeting': 'hello x', 'length': 1}\n1048576\n"
        );
        block_on(service.shutdown());
    }
}

engine_test! {
    fn the_code_file_is_the_runs_own() {
        // The run's code is a file in a folder of its own, not in /tmp or /workspace.
        let report =
            SERVICE.run("import os\nprint(os.listdir('/run/code'), os.listdir('/tmp'), os.listdir('.'))");
        assert_eq!(report.stdout, "['main.py'] [] []\n", "{report:#?}");
    }
}

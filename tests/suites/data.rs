//! The data-science sandbox (issue 10): the default image's stack works in a
//! run, arrives preloaded, respects the CPU share, and keeps the security
//! posture (nothing a run does to a preloaded module reaches the next run).
//! A bare image still works. Against the real engine.

use std::time::{Duration, Instant};

use crate::util::{
    AGENT_START, BARE_IMAGE, Shared, block_on, containers_of, docker, one_sandbox, run_on, server,
    started_service, test_config,
};
use mcp_code_exec::report::RunStatus;

static SERVICE: Shared = Shared::new();

engine_test! {
    fn the_data_stack_is_preloaded_and_computes_right() {
        let code = r#"
import sys
preloaded = all(m in sys.modules for m in ("numpy", "pandas", "matplotlib.pyplot", "PIL.Image"))
import numpy as np, pandas as pd, scipy.linalg
a = np.arange(1.0, 301.0).reshape(300, 1)
print(preloaded, float((a.T @ a)[0, 0]))
df = pd.DataFrame({"k": ["a", "b", "a", "b"], "v": [1, 2, 3, 4]})
print(df.groupby("k")["v"].sum().to_dict())
print(round(float(scipy.linalg.det(np.array([[2.0, 1.0], [1.0, 3.0]]))), 6))
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.stdout, "True 9045050.0\n{'a': 4, 'b': 6}\n5.0\n");
    }
}

engine_test! {
    fn plots_render_off_screen_and_show_never_blocks() {
        let code = r#"
import io
import matplotlib.pyplot as plt
from PIL import Image
fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
ax.plot([0, 1, 2], [2, 0, 1])
plt.show()
buffer = io.BytesIO()
fig.savefig(buffer, format="png")
print(plt.get_backend(), Image.open(buffer).size)
"#;
        let report = run_on(SERVICE.get(), code, Some(20.0));
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.stdout, "module://mcp_code_exec_display (640, 480)\n");
    }
}

engine_test! {
    fn native_thread_pools_follow_the_cpu_share() {
        let mut config = test_config();
        config.cpus = Some(1.0);
        config.pool_max = 1;
        let service = started_service(config);
        // OpenBLAS keeps its worker threads after a large product: with one CPU
        // it has none, and the product is still right.
        let code = r#"
import os
import numpy as np
a = np.ones((400, 400))
print(os.environ["OPENBLAS_NUM_THREADS"], float((a @ a)[0, 0]), len(os.listdir("/proc/self/task")))
"#;
        let report = run_on(&service, code, Some(30.0));
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.stdout, "1 400.0 1\n");
    }
}

engine_test! {
    fn a_patched_preloaded_module_is_fresh_in_the_next_run() {
        let service = started_service(one_sandbox());
        let patch = format!(
            "import numpy, pandas\nnumpy.sum = None\npandas.DataFrame.sum = None\n{AGENT_START}"
        );
        let patched = run_on(&service, &patch, Some(20.0));
        assert_eq!(patched.status, RunStatus::Success, "{patched:#?}");
        let look = format!(
            "import numpy, pandas\nprint(numpy.sum is not None, pandas.DataFrame.sum is not None)\n{AGENT_START}"
        );
        let looked = run_on(&service, &look, Some(20.0));
        assert_eq!(
            looked.stdout,
            format!("True True\n{}", patched.stdout),
            "fresh modules, same container"
        );
    }
}

engine_test! {
    /// Through the binary: a preloaded module the image lacks is a warning, not
    /// a failure; the bare image (Python alone) serves runs; a preload that does
    /// not fit in memory says so.
    fn missing_preloads_warn_and_a_bare_image_works() {
        let run_binary = |env: &[(&str, &str)]| {
            let mut env = env.to_vec();
            env.extend([("MCP_BRIDGE_LOG_LEVEL", "warn"), ("MCP_BRIDGE_METRICS_ADDR", "off")]);
            let code = "import sys\nprint(sys.version_info >= (3, 11))";
            let output = server::run_binary(&["run", "-", "--timeout", "30"], code, &env);
            (
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let (stdout, stderr) = run_binary(&[("MCP_BRIDGE_PRELOAD", "json,no_such_module_here")]);
        assert_eq!(stdout, "True\n", "{stderr}");
        assert!(
            stderr.contains("no_such_module_here (ModuleNotFoundError"),
            "{stderr}"
        );

        let (stdout, stderr) = run_binary(&[("MCP_BRIDGE_IMAGE", BARE_IMAGE)]);
        assert_eq!(stdout, "True\n", "{stderr}");
        assert!(stderr.contains("numpy (ModuleNotFoundError"), "{stderr}");

        let (stdout, _) = run_binary(&[("MCP_BRIDGE_MEMORY", "64m")]);
        assert!(
            stdout.contains("out of memory importing the preloaded modules")
                && stdout.contains("MCP_BRIDGE_MEMORY"),
            "{stdout}"
        );
    }
}

engine_test! {
    /// numpy's global generator is seeded once per process; every run is a
    /// fork of one zygote that imported it, so each run must reseed it.
    fn random_numbers_differ_between_runs_on_one_container() {
        let service = started_service(one_sandbox());
        let draw = format!(
            "import random, numpy as np\nprint(np.random.rand(), np.random.randint(1 << 30), random.random())\n{AGENT_START}"
        );
        let first = run_on(&service, &draw, Some(20.0));
        let second = run_on(&service, &draw, Some(20.0));
        let (numbers_1, container_1) = first.stdout.split_once('\n').unwrap();
        let (numbers_2, container_2) = second.stdout.split_once('\n').unwrap();
        assert_eq!(container_1, container_2, "one container");
        assert_ne!(numbers_1, numbers_2, "fresh seeds each run");
        block_on(service.shutdown());
    }
}

engine_test! {
    /// Code that imports only the standard library runs on a light spare
    /// (nothing preloaded in it); code that may use the preload, on the data
    /// spare; both on one sandbox, reset between runs. The reset forks only
    /// the kind the last run used: a data run right after a light one waits
    /// for its fork, a light run right after a data one takes the data spare
    /// (as with one fork source), and after an idle spell both are there.
    /// `MCP_BRIDGE_LIGHT_SPARE=off` keeps one fork source: every run sees
    /// the preload.
    fn light_runs_skip_the_preload_and_data_runs_get_it() {
        let service = started_service(one_sandbox());
        let light = "import sys\nprint('light' if 'pandas' not in sys.modules else 'data')";
        let data = "import sys\nif sys.argv is None:\n    import pandas\n\
                    print('light' if 'pandas' not in sys.modules else 'data')";
        let container = containers_of(&service);
        let mut seen = Vec::new();
        for (code, idle) in [(light, 0), (data, 0), (light, 0), (light, 0), (data, 300), (light, 300)] {
            std::thread::sleep(Duration::from_millis(idle));
            let report = run_on(&service, code, Some(20.0));
            assert_eq!(report.status, RunStatus::Success, "{report:#?}");
            seen.push(report.stdout.trim_end().to_owned());
        }
        assert_eq!(seen, ["light", "data", "data", "light", "data", "light"]);
        assert_eq!(containers_of(&service), container, "one sandbox, reset each time");
        block_on(service.shutdown());

        let mut config = one_sandbox();
        config.light_spare = false;
        let service = started_service(config);
        let report = run_on(&service, light, Some(20.0));
        assert_eq!(report.stdout, "data\n", "{report:#?}");
        block_on(service.shutdown());
    }
}

/// The memory of the processes in `service`'s one container, read from the
/// host's `/proc` (root reads a zygote's memory map, which a run in the
/// sandbox may not): the agent and every process under it.
struct SandboxMemory {
    processes: usize,
    /// `AnonHugePages`, KiB.
    huge: u64,
    /// `Pss_Anon`, KiB: the tree's own anonymous memory (its pages are
    /// shared only within it), each page counted once.
    anonymous: u64,
}

/// [`SandboxMemory`] of `service`'s one container. A process that exits
/// while the tree is walked (the reset after a run forks and reaps) is left
/// out: it is not the zygote, which lives on.
fn sandbox_memory(service: &mcp_code_exec::service::Service) -> SandboxMemory {
    let [container] = &containers_of(service)[..] else {
        panic!("one container")
    };
    let agent = docker(&["inspect", "-f", "{{.State.Pid}}", container]);
    let mut processes = vec![agent];
    let mut memory = SandboxMemory {
        processes: 0,
        huge: 0,
        anonymous: 0,
    };
    while let Some(pid) = processes.pop() {
        let rollup = match std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            Ok(rollup) => rollup,
            Err(error)
                if error.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
                    || error.kind() == std::io::ErrorKind::NotFound =>
            {
                continue;
            }
            Err(error) => panic!("/proc/{pid}/smaps_rollup: {error}"),
        };
        let kib = |field: &str| {
            rollup
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{field} in {rollup}"))
        };
        memory.processes += 1;
        memory.huge += kib("AnonHugePages:");
        memory.anonymous += kib("Pss_Anon:");
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue; // It exited after its rollup was read.
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            processes.extend(children.split_whitespace().map(str::to_owned));
        }
    }
    memory
}

engine_test! {
    /// The zygote's memory is in huge pages (`MCP_BRIDGE_HUGE_PAGES`, on by
    /// default), which the runs forked from it share until they write to
    /// them (a run's write splits the huge page it hits, so what a run sees
    /// in its own `smaps` depends on what it touched: the zygote is read
    /// from the host). Off, nothing in the sandbox is in huge pages (on a
    /// host whose THP mode is not `always`). Under gVisor the kernel
    /// refuses (MADV_COLLAPSE is Linux's) and the sandbox works as before.
    fn the_zygote_memory_is_in_huge_pages_unless_turned_off() {
        let code = "import pandas\nprint(pandas.DataFrame([[6, 7]]).prod(axis=1)[0])";
        // The sandbox's memory after a run, with or without huge pages, once
        // both spares are there again (the agent, two zygotes, two spares).
        let memory_with = |huge_pages: bool| {
            let mut config = one_sandbox();
            config.huge_pages = huge_pages;
            let service = started_service(config);
            let report = run_on(&service, code, Some(20.0));
            assert_eq!(report.stdout, "42\n", "{report:#?}");
            let memory = (!test_config().gvisor()).then(|| {
                // Once the reset is done and, a moment later, the other
                // spare forked and warm: two readings alike in a row.
                let pool = block_on(service.pool()).unwrap();
                assert!(block_on(pool.wait_warm(Duration::from_secs(30))));
                let until = Instant::now() + Duration::from_secs(10);
                let mut last = sandbox_memory(&service);
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let memory = sandbox_memory(&service);
                    let settled = memory.processes == 5
                        && last.processes == 5
                        && memory.anonymous.abs_diff(last.anonymous) < 512;
                    if settled || Instant::now() > until {
                        assert_eq!(memory.processes, 5, "the agent, two zygotes and their spares");
                        break memory;
                    }
                    last = memory;
                }
            });
            block_on(service.shutdown());
            memory
        };
        let (Some(on), Some(off)) = (memory_with(true), memory_with(false)) else {
            return; // gVisor: the runs worked.
        };
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap();
        if !thp.contains("[always]") {
            assert_eq!(off.huge, 0, "huge pages with MCP_BRIDGE_HUGE_PAGES=off");
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>());
        let (major, minor) = (parts.next().unwrap().unwrap(), parts.next().unwrap().unwrap());
        if (major, minor) >= (6, 1) {
            // Measured: 18-30 MiB of the data zygote's ~100.
            assert!(on.huge >= 8 << 10, "{} KiB in huge pages", on.huge);
        }
        // Only what the zygote mapped itself is collapsed: a collapse of
        // what it shares with the agent would copy it (measured: 19 MiB
        // more with every range collapsed; the same within 1 MiB without).
        assert!(
            on.anonymous <= off.anonymous + (6 << 10),
            "huge pages cost {} KiB of anonymous memory ({} against {})",
            on.anonymous.saturating_sub(off.anonymous),
            on.anonymous,
            off.anonymous
        );
    }
}

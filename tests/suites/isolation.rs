//! Nothing of one run survives into the next on the same container, and the
//! agent cannot be inspected or stopped by the code it runs.

use std::time::Duration;

use crate::util::{
    AGENT_START, Shared, assert_next_call_works, one_sandbox, run_on, started_service,
};
use mcp_code_exec::report::RunStatus;

static SERVICE: Shared = Shared::new();

engine_test! {
    fn the_next_run_sees_nothing_of_the_last() {
        let service = started_service(one_sandbox());

        let plant = r#"
import builtins, ctypes, json, os, subprocess, sys, time
for path in ('/tmp/leak', '/workspace/leak', '/dev/shm/leak'):
    open(path, 'w').write('x')
os.makedirs('/tmp/locked/inner')
os.chmod('/tmp/locked', 0)
os.makedirs('/workspace/out', exist_ok=True)
open('/workspace/out/leak.txt', 'w').write('x')
os.makedirs('/run/code/images', exist_ok=True)
open('/run/code/images/9999.png', 'w').write('x')
open('/run/code/leak.py', 'w').write('x')
builtins.LEAK = 1
json.LEAK = 1
os.environ['LEAK'] = '1'
subprocess.Popen(['sleep', '1000'], start_new_session=True)
if os.fork() == 0:          # a double-forked daemon that prints late
    os.setsid()
    if os.fork() == 0:
        time.sleep(0.4)
        print('LATE OUTPUT', flush=True)
        open('/tmp/late', 'w').write('x')
        os._exit(0)
    os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.shmget(0x5EED, 4096, 0o1600) >= 0, 'shmget failed'
assert libc.semget(0x5EEE, 1, 0o1600) >= 0, 'semget failed'
assert libc.msgget(0x5EEF, 0o1600) >= 0, 'msgget failed'
librt = ctypes.CDLL('librt.so.1', use_errno=True)
assert librt.mq_open(b'/leak', os.O_CREAT | os.O_RDWR, 0o600, None) >= 0, 'mq_open failed'
assert os.listdir('/dev/mqueue') == ['leak'], os.listdir('/dev/mqueue')
"#;
        let planted = run_on(&service, &format!("{plant}\n{AGENT_START}"), Some(10.0));
        assert_eq!(planted.status, RunStatus::Success, "{planted:#?}");
        std::thread::sleep(Duration::from_millis(800));

        let look = r#"
import builtins, json, os
ipc = {t: len(open(f'/proc/sysvipc/{t}').read().splitlines()) - 1 for t in ('shm', 'sem', 'msg')}
others = [p for p in os.listdir('/proc') if p.isdigit() and p not in ('1', str(os.getppid()), str(os.getpid()))]
print(json.dumps({
    'files': [sorted(os.listdir(d)) for d in ('/tmp', '/workspace', '/dev/shm', '/dev/mqueue', '/run/code')],
    'leaks': [hasattr(builtins, 'LEAK'), hasattr(json, 'LEAK'), 'LEAK' in os.environ],
    'processes': others,  # besides the agent, the zygote and us
    'ipc': ipc,
}, sort_keys=True))
"#;
        let seen = run_on(&service, &format!("{look}\n{AGENT_START}"), Some(10.0));
        assert_eq!(seen.status, RunStatus::Success, "{seen:#?}");
        let (state, agent) = seen.stdout.split_once('\n').expect("the state, then the agent start");
        assert_eq!(
            state,
            r#"{"files": [[], [], [], [], ["main.py"]], "ipc": {"msg": 0, "sem": 0, "shm": 0}, "leaks": [false, false, false], "processes": []}"#
        );
        assert_eq!(agent, planted.stdout, "both runs used the same container");
        assert!(!seen.stdout.contains("LATE"));
    }
}

engine_test! {
    /// Neither the agent (PID 1) nor the zygote (the run's parent, which every
    /// later run is forked from) can be read or written by user code.
    fn the_agent_and_the_zygote_cannot_be_inspected_or_stopped() {
        let code = r#"
import os, signal
denied = []
for pid in (1, os.getppid()):
    for path in ('mem', 'environ', 'fd/0', 'fd/1'):
        try:
            open(f'/proc/{pid}/{path}', 'rb').read(1)
        except PermissionError:
            denied.append(path)
    try:
        os.listdir(f'/proc/{pid}/fd')
    except PermissionError:
        denied.append('fd list')
for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGKILL):
    os.kill(1, sig)
print(len(denied), 'denied')
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.stdout, "10 denied\n", "{report:#?}");
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn runs_as_nobody_without_network_or_writable_root() {
        let code = r#"
import os, socket
print(os.getuid(), os.getgid(), os.getcwd(), os.environ['HOME'])
try:
    open('/usr/evil', 'w')
except OSError as e:
    print('root fs:', e.strerror)
try:
    socket.create_connection(('1.1.1.1', 53), timeout=2)
except OSError as e:
    print('network: unreachable')
print(sorted(i for _, i in socket.if_nameindex()))
print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])
# The kernel keyring is shared by every sandbox's uid: the engine's seccomp
# profile must refuse it (add_key, keyctl on x86_64).
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print('keyring:', [libc.syscall(nr, *args) for nr, args in ((248, (b'user', b'leak', b'x', 1, -4)), (250, (0, -4, 0, 0, 0)))])
"#;
        let report = SERVICE.run(code);
        assert_eq!(
            report.stdout,
            "65534 65534 /workspace /workspace\nroot fs: Read-only file system\nnetwork: unreachable\n['lo']\n0000000000000000\nkeyring: [-1, -1]\n",
            "{report:#?}"
        );
    }
}

engine_test! {
    fn stdout_and_stderr_are_separate_and_ordered_and_await_works() {
        let code = r#"
import asyncio, subprocess, sys
for i in range(3):
    print('out', i)
    print('err', i, file=sys.stderr)
subprocess.run(['echo', 'from a subprocess'])
async def twice(x):
    await asyncio.sleep(0.01)
    return 2 * x
print(await asyncio.gather(twice(1), twice(2)))
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(
            report.stdout,
            "out 0\nout 1\nout 2\nfrom a subprocess\n[2, 4]\n"
        );
        assert_eq!(report.stderr, "err 0\nerr 1\nerr 2\n");
    }
}

//! Nothing of one run survives into the next on the same container, and the
//! agent cannot be inspected or stopped by the code it runs.

use std::time::Duration;

use crate::util::{
    Shared, assert_next_call_works, containers_of, one_sandbox, run_on, started_service,
    test_config, under_test, wait_until,
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
if os.fork() == 0:          # a double-forked daemon that writes late
    os.setsid()
    if os.fork() == 0:
        # Into the stdout of every process it can open, the next run's
        # spare included, for as long as it lives; not the agent's (under
        # gVisor it opens, and that is the run's own stream: README,
        # "Choosing the engine"; elsewhere it is refused).
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            open('/tmp/late', 'w').write('x')
            for pid in os.listdir('/proc'):
                if pid.isdigit() and int(pid) not in (1, os.getpid()):
                    try:
                        fd = os.open(f'/proc/{pid}/fd/1', os.O_WRONLY | os.O_NONBLOCK)
                        os.write(fd, b'LATE OUTPUT\n')
                        os.close(fd)
                    except OSError:
                        pass
            time.sleep(0.01)
        os._exit(0)
    os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.shmget(0x5EED, 4096, 0o1600) >= 0, 'shmget failed'
assert libc.semget(0x5EEE, 1, 0o1600) >= 0, 'semget failed'
assert libc.msgget(0x5EEF, 0o1600) >= 0, 'msgget failed'
# Private ones too (no key to find them by), mode 0, above a few thousand
# ids used and removed (gVisor hands ids out in sequence).
for i in range(3000):
    assert libc.msgctl(libc.msgget(0, 0o600), 0, None) == 0
assert min(libc.shmget(0, 4096, 0), libc.semget(0, 2, 0), libc.msgget(0, 0)) >= 0, 'private ones failed'
librt = ctypes.CDLL('librt.so.1', use_errno=True)
queue = librt.mq_open(b'/leak', os.O_CREAT | os.O_RDWR, 0o600, None)
if os.path.isdir('/dev/mqueue'):
    assert queue >= 0 and os.listdir('/dev/mqueue') == ['leak'], 'mq_open failed'
else:
    # gVisor has POSIX queues but no /dev/mqueue to list them in: refused.
    assert queue == -1 and ctypes.get_errno() == 1, 'mq_open was not refused'
# The next spare warms up while the agent wipes: a slow wipe of /tmp, and
# the script's file a link to the next spare's own stdout.
for i in range(20_000):
    open(f'/tmp/slow{i}', 'w').close()
os.unlink('/run/code/main.py')
os.symlink('/proc/self/fd/1', '/run/code/main.py')
"#;
        let planted = run_on(&service, plant, Some(10.0));
        assert_eq!(planted.status, RunStatus::Success, "{planted:#?}");
        let container = containers_of(&service);
        assert_eq!(container.len(), 1, "{container:?}");
        // Time for a daemon that survived the reset to write (it lives 1.5 s).
        std::thread::sleep(Duration::from_millis(500));

        let look = r#"
import builtins, ctypes, json, os, struct
# Asked by key, not read from /proc/sysvipc (gVisor has none): 1 if it is still there.
libc = ctypes.CDLL(None, use_errno=True)
librt = ctypes.CDLL('librt.so.1', use_errno=True)
ipc = {
    'shm': int(libc.shmget(0x5EED, 0, 0) >= 0),
    'sem': int(libc.semget(0x5EEE, 0, 0) >= 0),
    'msg': int(libc.msgget(0x5EEF, 0) >= 0),
    'mq': int(librt.mq_open(b'/leak', os.O_RDONLY, 0, None) >= 0),
}
# How many of each kind exist, private ones included: SHM_INFO's shm_tot
# (pages), SEM_INFO's semusz, MSG_INFO's msgpool.
info = ctypes.create_string_buffer(128)
assert libc.shmctl(0, 14, info) >= 0
ipc['shm'] += struct.unpack_from('ixxxxQ', info)[1]
assert libc.semctl(0, 0, 19, info) >= 0
ipc['sem'] += struct.unpack_from('10i', info)[7]
assert libc.msgctl(0, 12, info) >= 0
ipc['msg'] += struct.unpack_from('i', info)[0]
def parent_and_start(pid):
    stat = open(f'/proc/{pid}/stat').read()
    fields = stat[stat.rindex(')') + 2:].split()
    return int(fields[1]), int(fields[19])
me = parent_and_start(os.getpid())[1]
others = {int(p): parent_and_start(p) for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getppid(), os.getpid())}
# Besides the agent, our zygote and us, the sandbox's own: the other zygote
# (a child of the agent) and a spare it forked after ours, if any.
other_zygote = [pid for pid, (parent, _) in others.items() if parent == 1][:1]
others = [
    pid for pid, (parent, start) in others.items()
    if pid not in other_zygote and not (parent in other_zygote and start >= me)
]
print(json.dumps({
    'files': [sorted(os.listdir(d)) if os.path.isdir(d) else None for d in ('/tmp', '/workspace', '/dev/shm', '/dev/mqueue', '/run/code')],
    'leaks': [hasattr(builtins, 'LEAK'), hasattr(json, 'LEAK'), 'LEAK' in os.environ],
    'processes': others,
    'ipc': ipc,
}, sort_keys=True))
"#;
        // gVisor has no /dev/mqueue (None); the queue itself must still be gone.
        let mqueue = if under_test().gvisor() { "null" } else { "[]" };
        let clean = format!(
            r#"{{"files": [[], [], [], {mqueue}, ["main.py"]], "ipc": {{"mq": 0, "msg": 0, "sem": 0, "shm": 0}}, "leaks": [false, false, false], "processes": []}}"#
        );
        let look_after = |what: &str| {
            let seen = run_on(&service, look, Some(10.0));
            assert_eq!(seen.status, RunStatus::Success, "{what}: {seen:#?}");
            assert_eq!(containers_of(&service), container, "{what}: both runs used the same container");
            // Nothing before the state: the late daemon's lines or the
            // warm-up's source would be there.
            assert_eq!(seen.stdout.trim_end(), clean, "{what}");
        };
        look_after("after the plant, the late daemon and the link to the next spare's stdout");

        // The link to a module of /workspace, which the next spare would
        // write after the agent emptied /workspace, while it is slow on
        // /run/code (tmpfs lists the newest first: the link comes last).
        let link = r#"
import os
os.unlink('/run/code/main.py')
os.symlink('/workspace/planted.py', '/run/code/main.py')
for i in range(20_000):
    open(f'/run/code/slow{i}', 'w').close()
"#;
        let linked = run_on(&service, link, Some(10.0));
        assert_eq!(linked.status, RunStatus::Success, "{linked:#?}");
        look_after("after the link to a module of /workspace");
    }
}

engine_test! {
    /// Neither the agent (PID 1) nor the zygote (the run's parent, which every
    /// later run is forked from) can be read or written by user code.
    ///
    /// gVisor (Debian's runsc 2022-12) differs, and the test pins what it does:
    /// only `/proc/PID/mem` of a non-dumpable process is refused (so the
    /// agent's protocol fds can be opened), and PID 1 gets no shield from
    /// signals sent inside the container: a run that stops the agent ends at
    /// its deadline, one that kills it ends as "the sandbox agent stopped
    /// unexpectedly"; either way that sandbox is replaced and the next call works.
    fn the_agent_and_the_zygote_cannot_be_inspected_or_stopped() {
        let inspect = r#"
import os, signal
denied = []
# The agent, and the zygotes: ours and the other (the agent's children).
zygotes = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()
           and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1] == '1']
for pid in (1, *zygotes):
    for path in ('mem', 'environ', 'fd/0', 'fd/1'):
        try:
            # Opened only: under gVisor fd/0 opens, and reading it would
            # wait for (and take) the host's next frame.
            f = open(f'/proc/{pid}/{path}', 'rb')
            if not path.startswith('fd/'):
                f.read(1)
        except PermissionError:
            denied.append(path)
    try:
        os.listdir(f'/proc/{pid}/fd')
    except PermissionError:
        denied.append('fd list')
"#;
        // The agent and both zygotes (the light one, the run's parent, and
        // the other), or the one zygote where there is no light one (gVisor).
        let processes = if test_config().light_spare { 3 } else { 2 };
        if !under_test().gvisor() {
            let code = format!(
                "{inspect}for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGKILL):\n    \
                 os.kill(1, sig)\nprint(len(denied), 'denied of', 1 + len(zygotes))"
            );
            let report = SERVICE.run(&code);
            let expected = format!("{} denied of {processes}\n", 5 * processes);
            assert_eq!(report.stdout, expected, "{report:#?}");
            assert_next_call_works(SERVICE.get());
            return;
        }
        let report = SERVICE.run(&format!("{inspect}print(denied)"));
        let expected = format!("{:?}\n", vec!["mem"; processes]).replace('"', "'");
        assert_eq!(report.stdout, expected, "{report:#?}");
        let stopped = run_on(
            SERVICE.get(),
            "import os, signal\nos.kill(1, signal.SIGSTOP)",
            Some(2.0),
        );
        assert_eq!(stopped.status, RunStatus::Timeout, "{stopped:#?}");
        assert_next_call_works(SERVICE.get());
        let killed = SERVICE.run("import os, signal\nos.kill(1, signal.SIGKILL)");
        assert_eq!(killed.status, RunStatus::Error, "{killed:#?}");
        assert!(
            killed
                .error
                .as_deref()
                .unwrap()
                .starts_with("the sandbox agent stopped unexpectedly"),
            "{killed:#?}"
        );
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn runs_as_nobody_without_network_or_writable_root() {
        let code = r#"
import os, socket
print(os.getuid(), os.getgid(), os.getcwd(), os.environ['HOME'])
print('root mount:', [m.split()[3].split(',')[0] for m in open('/proc/self/mounts') if m.split()[1] == '/'])
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
# profile must refuse it (add_key; keyctl's KEYCTL_GET_KEYRING_ID, which
# would succeed if it ran), and refuse it, not fail on its arguments.
import ctypes, errno, platform
libc = ctypes.CDLL(None, use_errno=True)
add_key, keyctl = {'x86_64': (248, 250), 'aarch64': (217, 219)}[platform.machine()]
def call(nr, *args):
    ctypes.set_errno(0)
    return f'{libc.syscall(nr, *args)}:{errno.errorcode.get(ctypes.get_errno())}'
print('keyring:', call(add_key, b'user', b'leak', b'x', 1, -4), call(keyctl, 0, -4, 0, 0, 0))
"#;
        let report = SERVICE.run(code);
        // gVisor checks the permission before the mount: a file uid 65534
        // may not create anyway is refused as such, not as read-only.
        let refused = if under_test().gvisor() {
            "Permission denied"
        } else {
            "Read-only file system"
        };
        let (head, keyring) = report.stdout.split_once("keyring: ").expect("the keyring line");
        assert_eq!(
            head,
            format!("65534 65534 /workspace /workspace\nroot mount: ['ro']\nroot fs: {refused}\nnetwork: unreachable\n['lo']\n0000000000000000\n"),
            "{report:#?}"
        );
        // Docker's profile refuses with EPERM. Podman's copy keeps Podman's
        // default refusal (its errno, ENOSYS in containers-common), and
        // gVisor answers the calls itself: there any refusal passes, never
        // an error about the arguments (EINVAL, …), which would mean it ran.
        let refusals: &[&str] = if under_test().podman || under_test().gvisor() {
            &["-1:EPERM", "-1:EACCES", "-1:ENOSYS"]
        } else {
            &["-1:EPERM"]
        };
        let calls: Vec<&str> = keyring.split_whitespace().collect();
        assert!(
            calls.len() == 2 && calls.iter().all(|call| refusals.contains(call)),
            "keyring: {keyring}"
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

engine_test! {
    /// Where user code can open the agent's pipes (gVisor; elsewhere it is
    /// refused), nothing it does with them reaches another run: the agent's
    /// stdin takes no writes (measured: the reopened pipe keeps its read-only
    /// mode), and a forged end of the run and "ready" on its stdout are not
    /// the agent's (no token): the container is replaced, never reused.
    fn what_a_run_writes_into_the_agents_pipes_reaches_no_other_run() {
        let service = started_service(one_sandbox());
        let write_into = |path: &str, what: &str| {
            format!(
                r#"
import os, struct, time
def frame(kind, payload):
    return kind + struct.pack('>I', len(payload)) + payload
try:
    fd = os.open('{path}', os.O_WRONLY)
except OSError as exc:
    print('open refused:', exc.strerror)
else:
    try:
        os.write(fd, {what})
    except OSError as exc:
        print('write refused:', exc.strerror)
    else:
        print('written')
        time.sleep(2)  # alive while the host would send the next request
"#
            )
        };
        let begun = write_into("/proc/1/fd/0", "b'A' + struct.pack('>I', 1 << 20) + b'begun'");
        let forged = write_into(
            "/proc/1/fd/1",
            r#"frame(b'D', b'{"exit_code": 0}') + frame(b'Y', b'{}')"#,
        );
        let gvisor = under_test().gvisor();
        for (what, code, replaced) in [
            ("a frame begun on its stdin", begun, false),
            ("a forged end and ready", forged, gvisor),
        ] {
            let before = containers_of(&service);
            assert_eq!(before.len(), 1, "{what}: {before:?}");
            let report = run_on(&service, &code, Some(10.0));
            assert_eq!(report.status, RunStatus::Success, "{what}: {report:#?}");
            let expected = match (gvisor, replaced) {
                (false, _) => "open refused: Permission denied\n",
                (true, false) => "write refused: Bad file descriptor\n",
                // The forged end of the run came before anything it printed.
                (true, true) => "",
            };
            assert_eq!(report.stdout, expected, "{what}: {report:#?}");
            if replaced {
                wait_until(&format!("{what}: its container to go"), Duration::from_secs(20), || {
                    !containers_of(&service).contains(&before[0])
                });
            }
            assert_next_call_works(&service);
            if !replaced {
                assert_eq!(containers_of(&service), before, "{what}: reused");
            }
        }
    }
}

# mcp-code-exec sandbox agent.
#
# Runs as PID 1 of a sandbox container, started as `python3 -c <this file>`
# (injected, no bind mount). It idles on stdin, runs each request's code in a
# forked child, streams the child's output back, then resets the container so
# that nothing of the run survives.
#
# Why PID 1 (and no separate init): the container's stdin/stdout are the
# protocol channel, and every process holding them could forge or steal frames.
# Only this process holds them, and it is non-dumpable, so user code (same uid)
# can neither ptrace it nor open /proc/1/fd/*. As the namespace's init it is
# also shielded by the kernel from signals sent inside the container (user code
# cannot kill or stop it), it inherits every orphan (so it reaps them, which is
# the job an init process would do), and `kill(-1, SIGKILL)` reaches every other
# process in the container, including ones that called setsid or double-forked.
#
# Frames, both directions: 1 byte kind, 4 bytes big-endian payload length,
# payload. Host -> agent: b"R" run (JSON request), b"A" the answer to a tool
# call (JSON). Agent -> host: b"Y" ready (JSON; sent at start and after each
# successful reset), b"O"/b"E" a chunk of the run's stdout/stderr (raw
# bytes), b"C" a tool call the run makes (JSON), b"D" run done (JSON), b"F"
# reset failed (JSON; the host then recycles the container). Keep in sync
# with protocol.rs.
#
# User code never touches the protocol: its fd 0 is /dev/null and its fd 1/2
# are pipes this agent reads, so `os.write(1, ...)`, `sys.__stdout__` and
# subprocesses all land in the run's output.

import ast
import asyncio
import builtins
import ctypes
import gc
import inspect
import io
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback

HEADER = struct.Struct(">BI")
READ_CHUNK = 64 * 1024
# Bytes read from the run's pipes after the child exited: what it (or a process
# it left behind) had buffered. Bounded so a leftover writer cannot keep us here.
DRAIN_LIMIT = 8 * 1024 * 1024
STATUS_LIMIT = 16 * 1024
# A tool call's JSON (its arguments) from user code; the mcp package gets it
# from here and refuses larger calls, the host applies the same bound
# (protocol.rs MAX_CALL_FRAME).
MAX_CALL_BYTES = 16 * 1024 * 1024
WIPE_DIRS = ("/tmp", "/workspace", "/dev/shm", "/dev/mqueue")
RESET_DEADLINE_S = 3.0
PR_SET_DUMPABLE = 4
IPC_RMID = 0
RUN_FILENAME = "<run_python>"
WARMUP_CODE = "x = [i * 2 for i in range(8)]\nprint(6 * 7, sum(x), 'warm')\n"

libc = ctypes.CDLL(None, use_errno=True)
devnull = os.open(os.devnull, os.O_RDWR)
# What a spare writes on its status pipe once warmed up.
WARM = b"W"
SPARE_WARM_TIMEOUT_S = 10.0


def send(kind, payload):
    header = HEADER.pack(kind, len(payload))
    if len(payload) < 4096:
        write_all(1, header + payload)  # one write: one hop through the engine's relay
    else:
        write_all(1, header)  # no copy of a large payload
        write_all(1, payload)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def send_json(kind, obj):
    send(kind, json.dumps(obj, separators=(",", ":")).encode())


class FrameReader:
    """Frames from the host on fd 0: blocking when idle, fed from poll during a run."""

    def __init__(self):
        self.buffer = bytearray()
        self.closed = False

    def feed(self):
        """Reads what fd 0 has (call when it polls readable)."""
        chunk = os.read(0, READ_CHUNK)
        if chunk:
            self.buffer += chunk
        else:
            self.closed = True

    def next_frame(self):
        """A whole frame (kind, payload) if buffered, else None."""
        if len(self.buffer) < HEADER.size:
            return None
        kind, length = HEADER.unpack_from(self.buffer)
        if len(self.buffer) < HEADER.size + length:
            return None
        payload = bytes(self.buffer[HEADER.size : HEADER.size + length])
        del self.buffer[: HEADER.size + length]
        return kind, payload

    def wait_frame(self):
        """Blocks until a whole frame arrives; None when the host is gone."""
        while True:
            frame = self.next_frame()
            if frame is not None or self.closed:
                return frame
            self.feed()


host = FrameReader()


# ---------------------------------------------------------------- the child


def close_fds_except(keep):
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def child_main(code_r, status_w, out_w, err_w, call_w, answer_r):
    """The spare: wires its stdio, warms itself up, then waits for the request."""
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    close_fds_except({code_r, status_w, call_w, answer_r})
    # Dumpable again, so user code sees a normal /proc/self. First in line for
    # the OOM killer, so a memory bomb kills the run, not the agent.
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    # Line buffered: output printed before a hang or a kill still reaches us.
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    sys.argv = [""]
    warm_up()
    write_all(status_w, WARM)

    chunks = []
    while True:
        chunk = os.read(code_r, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(code_r)
    request = json.loads(b"".join(chunks))
    env = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None}
    if request.get("servers") or request.get("discovered"):
        mcp_runtime["install"](
            env, (call_w, answer_r, MAX_CALL_BYTES), request.get("servers", []), request.get("discovered", [])
        )
    exit_code, status = execute(request["code"], env)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    # The output is in its pipes now. Closing the status pipe tells the agent
    # the run is over before this process's teardown, which is slow (its
    # whole copy-on-write address space) and need not delay the answer.
    status["exit_code"] = exit_code
    try:
        write_all(status_w, json.dumps(status).encode()[:STATUS_LIMIT])
        os.close(status_w)
    except OSError:
        pass
    os._exit(exit_code)


def warm_up():
    """Run a tiny snippet to /dev/null so that the copy-on-write faults and
    caches of a first execution happen before a request, not during it."""
    real = sys.stdout
    sys.stdout = io.TextIOWrapper(io.FileIO(0, "w", closefd=False))  # fd 0 is /dev/null, opened read-write
    try:
        execute(WARMUP_CODE, {"__name__": "__main__", "__builtins__": builtins})
        sys.stdout.flush()
    finally:
        sys.stdout = real


def execute(source, env):
    """Runs user code as __main__ in `env`; returns (exit code, status for the host)."""
    try:
        code = compile(
            source, RUN_FILENAME, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(code, env))
        else:
            exec(code, env)
        return 0, {}
    except SystemExit as exc:
        return system_exit_code(exc), {}
    except BaseException as exc:
        print_user_traceback(exc)
        summary = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return 1, {"error": summary[:4000], "error_type": type(exc).__name__}


def system_exit_code(exc):
    # Mirrors the interpreter: None -> 0, int -> itself, anything else printed -> 1.
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def print_user_traceback(exc):
    # Start the traceback at the first frame of the user's code, hiding ours.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != RUN_FILENAME:
        tb = tb.tb_next
    try:
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    except Exception:
        pass


# ---------------------------------------------------------------- the agent


class Spare:
    """A forked child waiting for code, with the agent's ends of its pipes."""

    def __init__(self):
        code_r, self.code_w = os.pipe()
        self.status_r, status_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.call_r, call_w = os.pipe()
        answer_r, self.answer_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                child_main(code_r, status_w, out_w, err_w, call_w, answer_r)
            except BaseException:
                # An agent bug, not the user's: show it in the run's stderr.
                traceback.print_exc()
            finally:
                os._exit(70)
        self.pid = pid
        for fd in (code_r, status_w, out_w, err_w, call_w, answer_r):
            os.close(fd)
        for fd in (self.out_r, self.err_r, self.status_r, self.call_r, self.answer_w):
            os.set_blocking(fd, False)
        self.pidfd = os.pidfd_open(pid)

    def wait_warm(self, timeout_s):
        """True once the spare has warmed up and waits for code."""
        ready, _, _ = select.select([self.status_r], [], [], timeout_s)
        return bool(ready) and read_some(self.status_r) == WARM

    def close(self):
        for fd in (self.code_w, self.status_r, self.out_r, self.err_r, self.call_r, self.answer_w, self.pidfd):
            try:
                os.close(fd)
            except OSError:
                pass


class Output:
    """Forwards one stream's chunks up to the byte cap, counts the rest."""

    def __init__(self, kind, cap):
        self.kind = kind
        self.room = cap
        self.dropped = 0

    def forward(self, data):
        if self.room > 0:
            head = data[: self.room]
            self.room -= len(head)
            send(self.kind, head)
            data = data[len(head):]
        self.dropped += len(data)


class CallRelay:
    """Tool calls of the run: JSON lines from the child become b"C" frames;
    b"A" frames from the host become lines to the child, written as the
    child reads them (never blocking the loop that drains its output)."""

    def __init__(self, spare):
        self.call_r = spare.call_r
        self.answer_w = spare.answer_w
        self.partial = b""
        self.pending = bytearray()

    def forward_calls(self, data):
        # The mcp package refuses larger calls with a clear error; a line this
        # long was written by hand, past it, and the host would reject it.
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_CALL_BYTES or any(len(line) > MAX_CALL_BYTES for line in lines):
            raise ValueError("a tool call request exceeds the size limit")
        for line in lines:
            send(ord("C"), line)

    def queue_answer(self, payload):
        self.pending += payload + b"\n"

    def write_answers(self):
        try:
            written = os.write(self.answer_w, self.pending)
        except BlockingIOError:
            return
        except OSError:
            written = len(self.pending)  # the child stopped listening
        del self.pending[:written]


def run(spare, payload, request):
    started = time.monotonic_ns()
    oom_before = oom_counter.read()
    outputs = {
        spare.out_r: Output(ord("O"), request["max_output_bytes"]),
        spare.err_r: Output(ord("E"), request["max_output_bytes"]),
    }
    try:
        write_all(spare.code_w, payload)
    except OSError:
        pass  # the child is gone; its exit status says why
    os.close(spare.code_w)
    spare.code_w = -1

    # The run is over when the child closes its status pipe after a complete
    # status (the fast, usual way) or when it exits (killed, os._exit, crash).
    relay = CallRelay(spare)
    poller = select.poll()
    for fd in (*outputs, spare.status_r, spare.pidfd, spare.call_r, 0):
        poller.register(fd, select.POLLIN)
    status_bytes = b""
    exit_code = None
    while exit_code is None:
        for fd, _ in poller.poll():
            if fd == spare.pidfd:
                _, wait_status = os.waitpid(spare.pid, 0)
                exit_code = os.waitstatus_to_exitcode(wait_status)
                continue
            if fd == 0:
                relay_answers(relay, poller)
                continue
            if fd == spare.answer_w:
                relay.write_answers()
                if not relay.pending:
                    poller.unregister(fd)
                continue
            data = read_some(fd)
            if data is None:
                continue
            if fd == spare.status_r:
                status_bytes += data[: STATUS_LIMIT - len(status_bytes)]
                if not data:
                    poller.unregister(fd)
                    exit_code = parse_status(status_bytes).get("exit_code")
            elif not data:
                poller.unregister(fd)
            elif fd == spare.call_r:
                try:
                    relay.forward_calls(data)
                except ValueError:
                    os.kill(spare.pid, signal.SIGKILL)  # reported by its exit status
            else:
                outputs[fd].forward(data)
    # Exited before we read its status (both became ready at once): read it now.
    while len(status_bytes) < STATUS_LIMIT and (data := read_some(spare.status_r)):
        status_bytes += data[: STATUS_LIMIT - len(status_bytes)]
    for fd, output in outputs.items():
        budget = DRAIN_LIMIT
        while budget > 0:
            data = read_some(fd)
            if not data:
                break
            budget -= len(data)
            output.forward(data)

    status = parse_status(status_bytes)
    done = {
        "exit_code": exit_code,
        "oom": oom_counter.read() > oom_before or status.get("error_type") == "MemoryError",
        "error": status.get("error"),
        "error_type": status.get("error_type"),
        "dropped_stdout": outputs[spare.out_r].dropped,
        "dropped_stderr": outputs[spare.err_r].dropped,
        "agent_us": (time.monotonic_ns() - started) // 1000,
    }
    send_json(ord("D"), done)


def relay_answers(relay, poller):
    """Reads host frames during a run and queues the answers for the child."""
    host.feed()
    if host.closed:
        os._exit(0)
    had_pending = bool(relay.pending)
    while (frame := host.next_frame()) is not None:
        kind, payload = frame
        if kind != ord("A"):
            sys.stderr.write(f"mcp-code-exec agent: unexpected frame kind {kind} during a run\n")
            os._exit(3)
        relay.queue_answer(payload)
    if relay.pending and not had_pending:
        poller.register(relay.answer_w, select.POLLOUT)


def read_some(fd):
    """A chunk, b"" at end of file, or None when nothing is there right now."""
    try:
        return os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return None


def parse_status(data):
    """The child's report, if whole and well-formed (user code can write to it)."""
    try:
        status = json.loads(data)
    except ValueError:
        return {}
    if not isinstance(status, dict):
        return {}
    clean = {k: v for k, v in status.items() if k in ("error", "error_type") and isinstance(v, str)}
    code = status.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255:
        clean["exit_code"] = code
    return clean


class OomCounter:
    """The container's OOM-kill counter (cgroup v2, then v1), read through a
    file kept open: a pread instead of an open per run."""

    def __init__(self):
        self.fd = None
        for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
            try:
                self.fd = os.open(path, os.O_RDONLY)
                break
            except OSError:
                continue

    def read(self):
        if self.fd is None:
            return 0
        try:
            for line in os.pread(self.fd, 4096, 0).split(b"\n"):
                name, _, value = line.partition(b" ")
                if name == b"oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0


oom_counter = OomCounter()

# The `mcp` package of the sandbox (mcp_runtime.py), passed as argv[1]: its
# classes are built once here and inherited by every run.
mcp_runtime = {"__name__": "mcp_runtime"}
if len(sys.argv) > 1:
    exec(compile(sys.argv[1], "<mcp-runtime>", "exec"), mcp_runtime)


# ---------------------------------------------------------------- the reset


def reset(spare, baseline):
    """Returns None when the container is as it was before the run, or why not."""
    if not kill_all_others(spare):
        return "processes survived SIGKILL"
    spare.close()
    for path in WIPE_DIRS:
        try:
            wipe_children(path)
        except FileNotFoundError:
            continue
        except (OSError, RecursionError) as exc:
            return f"could not empty {path}: {exc}"
    remove_sysv_ipc()
    if integrity() != baseline:
        return "the agent's limits or scheduling were changed"
    return None


def kill_all_others(spare):
    """SIGKILL every process but this one until none is left (zombies reaped).
    kill(-1) from PID 1 reaches every other process in the container."""
    deadline = time.monotonic() + RESET_DEADLINE_S
    # Usually only the run's child is left, still tearing down its address
    # space: the first wait is for exactly that; later ones poll briefly.
    wait_for = [spare.pidfd]
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return True  # nothing else exists, not even a zombie
        select.select(wait_for, [], [], 0.0002 if not wait_for else 0.05)
        wait_for = []
        reap()
        if time.monotonic() > deadline:
            return False


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wipe_children(path):
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, 0o700)
            wipe_children(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


def remove_sysv_ipc():
    # SysV objects outlive processes; the container's IPC namespace is private.
    for table, remove in (
        ("shm", lambda ident: libc.shmctl(ident, IPC_RMID, None)),
        ("sem", lambda ident: libc.semctl(ident, 0, IPC_RMID)),
        ("msg", lambda ident: libc.msgctl(ident, IPC_RMID, None)),
    ):
        try:
            with open(f"/proc/sysvipc/{table}") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 1:
                        remove(int(fields[1]))
        except (OSError, ValueError):
            continue


def integrity():
    """What user code could change about the agent from outside it (same uid)."""
    limits = tuple(resource.getrlimit(getattr(resource, name)) for name in dir(resource) if name.startswith("RLIMIT_"))
    return limits, os.getpriority(os.PRIO_PROCESS, 0), tuple(sorted(os.sched_getaffinity(0)))


# ---------------------------------------------------------------- main


def main():
    if os.getpid() != 1:
        # kill(-1) outside a PID namespace would hit every process of this uid.
        sys.stderr.write("mcp-code-exec agent: refusing to run outside a container (not PID 1)\n")
        sys.exit(2)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    # The root filesystem is read-only and /workspace is wiped: caches are noise.
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.chdir("/workspace")
    baseline = integrity()
    gc.collect()
    gc.freeze()
    spare = Spare()
    if not spare.wait_warm(SPARE_WARM_TIMEOUT_S):
        sys.stderr.write("mcp-code-exec agent: the first spare did not warm up\n")
        os._exit(5)
    send_json(ord("Y"), {"python": sys.version.split()[0]})
    while True:
        frame = host.wait_frame()
        if frame is None:
            os._exit(0)
        kind, payload = frame
        if kind == ord("A"):
            continue  # a late answer to a call of a run that has ended
        if kind != ord("R"):
            sys.stderr.write(f"mcp-code-exec agent: unknown frame kind {kind}\n")
            os._exit(3)
        run(spare, payload, json.loads(payload))
        failure = reset(spare, baseline)
        if failure:
            # The host recycles this container; nothing here can be trusted now.
            send_json(ord("F"), {"reason": failure})
            os._exit(4)
        spare = Spare()
        # Ready means warm: the next run must not pay for the warm-up.
        if not spare.wait_warm(SPARE_WARM_TIMEOUT_S):
            send_json(ord("F"), {"reason": "the new spare did not warm up"})
            os._exit(4)
        send_json(ord("Y"), {})


main()

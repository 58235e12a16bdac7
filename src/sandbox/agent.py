# mcp-code-exec sandbox agent.
#
# Runs as PID 1 of a sandbox container, started as `python3 -c <this file>`
# (injected, no bind mount). It idles on stdin, has each request's code run in
# a warm spare process, streams the spare's output back, then resets the
# container so that nothing of the run survives.
#
# The process tree (ARCHITECTURE.md draws it):
#
#   PID 1, the agent: holds the protocol (stdin/stdout), reads every request
#   │   and relays every byte of every run. It never forks user code: its heap
#   │   holds earlier runs' data (freed memory is not zeroed).
#   ├── the zygote: forked at start, before any request; it never reads the
#   │   │   host's frames, only one-byte commands and pipe fds from the agent,
#   │   │   so nothing of any run ever reaches its memory. It imports the
#   │   │   preload (MCP_BRIDGE_PRELOAD), forks the spares, reaps them (it is
#   │   │   the child subreaper of everything below it; where it cannot be,
#   │   │   under gVisor, the agent reaps the orphans) and kills everything
#   │   │   but the light zygote at reset.
#   │   └── a spare: forked ahead of time, rehearsed, waits on its code pipe;
#   │       it runs one request as `__main__`, then exits. A session's spare
#   │       runs one request after another in the same `__main__` (no reset
#   │       between them) until its session ends, which recycles the container.
#   └── the light zygote (when there is a preload and MCP_BRIDGE_LIGHT_SPARE
#       │   is on): the same as the zygote, with nothing preloaded, forked
#       │   just before it; it never kills.
#       └── a light spare: serves the runs that surely need no preloaded
#           module (spares.py chooses), at the cost of a ~10 MiB fork, not
#           a ~95 MiB one.
#
# Why PID 1 (and no separate init): the container's stdin/stdout are the
# protocol channel, and every process holding them could forge or steal frames.
# Only the agent holds them, and it is non-dumpable, so user code (same uid)
# can neither ptrace it nor open /proc/1/fd/*. As the namespace's init it is
# also shielded by the kernel from signals sent inside the container. The
# zygote is non-dumpable too (user code cannot read or write its memory); user
# code can signal it or change its scheduling from outside, which the reset
# detects (the container is then recycled, so only the attacker's run suffers).
#
# Frames, both directions: 1 byte kind, 4 bytes big-endian payload length,
# payload. Host -> agent: b"R" run (JSON request), b"A" the answer to a tool
# call (JSON). Agent -> host: b"Y" ready (JSON; sent at start and after each
# successful reset, each with the token of the first, which no run sees),
# b"O"/b"E" a chunk of the run's stdout/stderr (raw bytes), b"C" a tool call
# the run makes (JSON), b"I" an image of the run (a PNG), b"P" a file of the
# run (path length, path, bytes), b"D" run done (JSON), b"F" reset failed
# (JSON; the host then recycles the container).
# Host files: a request with "host_files" (path and size, or a folder, each)
# is followed by b"H" frames of their bytes, in order, and nothing else until
# the last; the agent writes them under /workspace before the code starts.
# Streams (egress): during a run the agent accepts connections on the proxy
# port of the sandbox's loopback and relays each as a stream: b"N" opens one
# (agent -> host), b"S" carries its bytes, b"X" ends or aborts it, b"W" grants
# credit (both ways); streams.py holds the agent's half.
# A request with "session": true is a session's call: its D says "kept" when
# the spare lives on for the next call (then no reset and no Y follow), or
# "session_gone" (with the spare's exit code) when it had died before the
# call (the code did not run). After a session's call that is not kept the
# agent does not reset either: the host recycles a session's container.
# Between a session's calls every process but PID 1 and the zygote is
# stopped (stop_session). Keep in sync with protocol.rs.
#
# Agent <-> zygote, one SOCK_SEQPACKET message each: b"S" + six pipe fds
# (SCM_RIGHTS) asks for a spare, answered b"P<pid>"; b"K" (the reset) asks
# to kill every process but the two of them and the light zygote, answered
# b"k", then, when six fds came with it, forks the spare like S;
# b"X<reason>" answers either when the zygote cannot be trusted any more.
# The light zygote serves S the same way. The zygote also says b"E<pid> <code>"
# when a spare exits. No pidfds: this works under gVisor too.
#
# Agent <-> spare: requests on the code pipe and statuses on the status pipe
# are messages of a 4-byte big-endian length and JSON (after the status pipe's
# one-byte "warm" signal). Before a fresh spare's first request the agent
# writes its code to /run/code/main.py.
#
# User code never touches the protocol: its fd 0 is /dev/null and its fd 1/2
# are pipes the agent reads, so `os.write(1, ...)`, `sys.__stdout__` and
# subprocesses all land in the run's output.

import ast
import asyncio
import atexit
import base64
import builtins
import ctypes
import errno
import gc
import importlib
import importlib.machinery
import inspect
import io
import itertools
import json
import linecache
import os
import platform
import re
import resource
import select
import signal
import socket
import stat
import struct
import sys
import time
import traceback
import types
import warnings

HEADER = struct.Struct(">BI")
# Agent <-> spare messages (a request on the code pipe, a status on the status pipe).
LENGTH = struct.Struct(">I")
READ_CHUNK = 64 * 1024
# Bytes read from the run's pipes after the child exited: what it (or a process
# it left behind) had buffered. Bounded so a leftover writer cannot keep us here.
DRAIN_LIMIT = 8 * 1024 * 1024
# How long, at most, a session's leftovers between calls are drained.
LEFTOVERS_DEADLINE_S = 1.0
STATUS_LIMIT = 16 * 1024
# A tool call's JSON (its arguments) from user code; the mcp package gets it
# from here and refuses larger calls, the host applies the same bound
# (protocol.rs MAX_CALL_FRAME).
MAX_CALL_BYTES = 16 * 1024 * 1024
# The id at the head of a call line, as the mcp package writes it.
CALL_ID = re.compile(rb'\{\s*"id"\s*:\s*(\d{1,18})\s*,')
WORKSPACE = "/workspace"
# The run's code is a real file, as under `python3 main.py`: tracebacks,
# inspect, warnings and multiprocessing's spawn/forkserver read it. Its folder
# is a tmpfs of its own (engine/spec.rs), so /tmp and /workspace stay the user's.
SCRIPT_DIR = "/run/code"
SCRIPT_NAME = "main.py"
SCRIPT = f"{SCRIPT_DIR}/{SCRIPT_NAME}"
# The run's package directory (packages.py): the one that allows exec.
PACKAGES_DIR = "/run/packages"
WIPE_DIRS = ("/tmp", WORKSPACE, SCRIPT_DIR, PACKAGES_DIR, "/dev/shm", "/dev/mqueue")
# The sandbox's trust for TLS when the operator gave one (MCP_BRIDGE_CA_BUNDLE):
# written again after every wipe, so a run's change to it dies with the run.
TRUST_NAME = "ca-bundle.pem"
TRUST = f"{SCRIPT_DIR}/{TRUST_NAME}"
TRUST_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "PIP_PROXY")
STREAM_KINDS = (ord("S"), ord("X"), ord("W"))
# What a run hands back: the images display.py wrote, the files under out/.
IMAGE_DIR = SCRIPT_DIR + "/images"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OUT_DIR = WORKSPACE + "/out"
OUT_MAX_DEPTH = 16
OUT_MAX_ENTRIES = 10_000  # directory entries looked at, so a huge tree cannot hold the run
IMAGE_MAX_ENTRIES = 1_000
MAX_PATH_BYTES = 4096  # of a returned file (protocol.rs MAX_PATH_BYTES)
RESET_DEADLINE_S = 3.0
# The reset's waits add up to less than the host's (pool.rs RESET_TIMEOUT,
# 10 s), so the host hears the agent's own reason (F) rather than a timeout.
ZYGOTE_REPLY_TIMEOUT_S = RESET_DEADLINE_S + 1.0
FORK_REPLY_TIMEOUT_S = 1.5
# How often the agent reaps the orphans the zygote kills (Zygote.request).
ORPHAN_REAP_S = 0.005
RESET_WARM_TIMEOUT_S = 3.5
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
MADV_COLLAPSE = 25  # Linux 6.1
HUGE_PAGE = 2 << 20
SECCOMP_MODE_FILTER = 2
IPC_PRIVATE = 0
IPC_RMID = 0
MSG_INFO = 12
SHM_INFO = 14
SEM_INFO = 19
# Where /proc/sysvipc is missing (gVisor), objects are found by id: ids come
# in sequence there, so a run's objects lie below a new one's id; this many
# ids below it are tried (a run that went through more, and left one lower
# down, fails the reset: remove_sysv_ipc counts what is left).
SYSV_PROBE_IDS = 4096
# mq_open, refused to runs where POSIX message queues cannot be listed
# (no /dev/mqueue: gVisor), by a seccomp filter of the zygote.
MQ_OPEN = {"x86_64": 240, "aarch64": 180}.get(platform.machine())
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(platform.machine())
IOPRIO_WHO_PROCESS = 1
SYS_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}.get(platform.machine())
# The zygote's messages: one-byte commands and short replies, and its hello
# (the preloaded modules that are missing: at most 50 of 200 bytes each).
ZYGOTE_MESSAGE_LIMIT = 16 * 1024
ZYGOTE_START_TIMEOUT_S = 60.0  # the preload of a data-science stack takes ~1 s
WARMUP_FILENAME = "<warm-up>"
# After a preload, one use of each heavy module moves its lazy imports and
# caches (BLAS, groupby kernels, fonts and the Agg renderer) into the zygote,
# so a run's first use is as warm as its second.
PRELOAD_WARM_UPS = {
    "numpy": "import numpy as np\n(np.arange(6.0).reshape(3, 2) @ np.ones((2, 2))).sum()\n",
    "pandas": "import pandas as pd\npd.DataFrame({'k': [1, 2, 2], 'v': [1.0, 2.0, 3.0]}).groupby('k').sum()\n",
    "matplotlib.pyplot": (
        "import io\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])\n"
        "ax.set_title('warm')\nfig.savefig(io.BytesIO(), format='png')\nplt.close(fig)\n"
    ),
}
WARMUP_CODE = "x = [i * 2 for i in range(8)]\nprint(6 * 7, sum(x), 'warm')\n"
# The MCP server of a rehearsal (rehearsal_for): one tool, as the host
# describes a server (protocol.rs RunFrame).
REHEARSAL_SERVER = {
    "name": "rehearsal",
    "alias": "rehearsal",
    "description": "",
    "tools": [{"name": "tool", "alias": "tool", "description": "", "input_schema": {"type": "object"}}],
}
# The rehearsals' requests, encoded, by shape (rehearsal_for).
rehearsals = {}

libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
devnull = os.open(os.devnull, os.O_RDWR)
# What a spare writes on its status pipe once warmed up.
WARM = b"W"
SPARE_WARM_TIMEOUT_S = 10.0
# How much of what a spare that did not warm up wrote is told (Spare.last_words).
LAST_WORDS_LIMIT = 300
# How long a container with a light zygote idles before it forks the spare
# its reset did not (Spares): longer than the gaps of a stream of runs,
# shorter than a model's turn.
SPARE_IDLE_S = 0.1


def send(kind, *parts):
    """One frame to the host on fd 1 (the protocol channel), in one write
    when the pipe takes it: one hop through the engine's relay."""
    write_parts(1, [HEADER.pack(kind, sum(len(part) for part in parts)), *parts])


def write_all(fd, data):
    write_parts(fd, (data,))


def write_parts(fd, parts):
    """Writes the buffers in order, whole (one writev when the fd takes them)."""
    parts = [memoryview(part) for part in parts if part]
    while parts:
        written = os.writev(fd, parts)
        while written:
            if written >= len(parts[0]):
                written -= len(parts[0])
                parts.pop(0)
            else:
                parts[0] = parts[0][written:]
                written = 0


def send_json(kind, obj):
    send(kind, json.dumps(obj, separators=(",", ":")).encode())


class FrameReader:
    """Frames from the host on fd 0: blocking when idle, fed from poll during a run."""

    def __init__(self, fd=0):
        self.fd = fd
        self.buffer = bytearray()
        self.closed = False

    def feed(self):
        """Reads what the fd has (call when it polls readable)."""
        chunk = os.read(self.fd, READ_CHUNK)
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

    def wait_readable(self, timeout_s):
        """True when a frame is buffered or the fd turns readable within `timeout_s`."""
        return bool(self.buffer) or self.closed or bool(select.select([self.fd], [], [], timeout_s)[0])

    def wait_frame(self):
        """Blocks until a whole frame arrives; None when the host is gone."""
        while True:
            frame = self.next_frame()
            if frame is not None or self.closed:
                return frame
            self.feed()


def integrity():
    """What user code could change about this process from outside it (same
    uid): limits, nice value, CPU affinity, scheduling policy, I/O priority."""
    limits = tuple(resource.getrlimit(getattr(resource, name)) for name in dir(resource) if name.startswith("RLIMIT_"))
    return (
        limits,
        os.getpriority(os.PRIO_PROCESS, 0),
        tuple(sorted(os.sched_getaffinity(0))),
        os.sched_getscheduler(0),
        os.sched_getparam(0).sched_priority,
        io_priority(),
    )


def io_priority():
    if SYS_IOPRIO_GET is None:
        return None
    value = libc.syscall(SYS_IOPRIO_GET, IOPRIO_WHO_PROCESS, 0)
    return value if value >= 0 else None  # gVisor: not implemented, consistently


# ---------------------------------------------------------------- the run (in a spare)


def close_fds_except(keep):
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def spare_main(code_r, status_w, out_w, err_w, call_w, answer_r):
    """The spare: wires its stdio, warms itself up, then runs requests. A
    stateless request is its one run: it then ends as the interpreter ends.
    A session's requests run one after another in the same `__main__`, until
    the agent closes the code pipe or the container goes."""
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    close_fds_except({code_r, status_w, call_w, answer_r})
    # The zygote's signal wiring is not the user's: defaults, as at interpreter start.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Dumpable again, so user code sees a normal /proc/self. First in line for
    # the OOM killer, so a memory bomb kills the run, not the agent.
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)  # not open(): its three layers cost ~20 faults
        try:
            os.write(fd, b"1000")
        finally:
            os.close(fd)
    except OSError:
        pass
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    # Line buffered: output printed before a hang or a kill still reaches us.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    reseed_random_generators()
    channel = mcp_runtime["connect"](call_w, answer_r, MAX_CALL_BYTES)
    rehearse(read_message(code_r), channel)  # the agent's, written before the fork (Spare)
    write_all(status_w, WARM)

    module = None
    calls = 0
    while (request := read_message(code_r)) is not None:
        calls += 1
        if module is None:
            module = fresh_main_module()  # the agent wrote the script (write_script)
            filename = SCRIPT
        else:
            # A session's later call: the same `__main__`; its code is served
            # to tracebacks and inspect from memory (files would fill /run/code).
            filename = f"{SCRIPT_DIR}/call{calls}.py"
            lines = request["code"].splitlines(keepends=True)
            linecache.cache[filename] = (len(request["code"]), None, lines, filename)
        exit_code = serve(request, module, filename, channel, status_w)
        if not request.get("session"):
            # The output is in its pipes and the status sent: the teardown of
            # this process (its whole copy-on-write address space) need not
            # delay the answer.
            os._exit(exit_code)
    os._exit(0)


def serve(request, module, filename, channel, status_fd):
    """Runs one request in `module`, ends it as the interpreter ends (a
    session's call as a notebook cell), sends its status on `status_fd`;
    returns its exit code."""
    exit_code, status, display = run_code(request, module, filename, channel)

    def figures_left_open():  # after threads, before atexit
        if display is not None:
            status.update(display_runtime["finish"](display))

    if request.get("session"):
        # Like a notebook cell: figures shown, streams flushed; threads
        # run on and atexit waits for the end of the session.
        figures_left_open()
        flush_standard_streams()
    else:
        exit_code = interpreter_exit(exit_code, figures_left_open)
    status["exit_code"] = exit_code
    write_status(status_fd, status)
    return exit_code


def run_code(request, module, filename, channel):
    """Writes the request's files, wires its `mcp` package and `display`,
    runs its code in `module`; returns (exit code, status, display)."""
    if request.get("setup_error"):
        message = request["setup_error"]
        print(message, file=sys.stderr, flush=True)
        return 1, {"error": message, "error_type": "FileError"}, None
    try:
        write_input_files(request.get("files", []))
    except (OSError, ValueError) as exc:  # e.g. "a" and "a/b" both given, or a full disk
        message = f"could not write the call's files: {type(exc).__name__}: {exc}"
        print(message, file=sys.stderr, flush=True)
        return 1, {"error": message, "error_type": "FileError"}, None
    if installs_mcp(request):
        mcp_runtime["install"](
            module.__dict__,
            channel,
            request.get("servers", []),
            request.get("discovered", []),
        )
    if request.get("skills"):
        skills_runtime["install"](module.__dict__, channel)
    installed = None
    if request.get("packages"):
        try:
            installed = packages_runtime["install"](request["packages"], request.get("wheels", ()))
        except (packages_runtime["InstallError"], OSError, ValueError, KeyError) as exc:
            message = str(exc) if isinstance(exc, packages_runtime["InstallError"]) else f"packages: {exc!r}"
            print(message, file=sys.stderr, flush=True)
            return 1, {"error": message.splitlines()[0], "error_type": "PackageError"}, None
    display = None
    if "display" in request:
        display = display_runtime["install"](dict(request["display"], directory=IMAGE_DIR))
    exit_code, status = execute(request["code"], module.__dict__, filename)
    if installed is not None:
        status["packages"] = installed
    return exit_code, status, display


def installs_mcp(request):
    """Whether a run of `request` installs the `mcp` package (run_code)."""
    return bool(request.get("servers") or request.get("discovered"))


def read_message(fd):
    """The next message on a pipe (4-byte big-endian length, JSON); None
    when the pipe ends between messages."""
    header = read_exactly(fd, LENGTH.size)
    if not header:
        return None
    return json.loads(read_exactly(fd, LENGTH.unpack(header)[0]))


def read_exactly(fd, size):
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            if chunks:
                raise EOFError("a message was cut short")
            return b""
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def write_status(fd, status):
    """The run's status as one message; cut to its essentials when over the
    limit (an error message of 4000 wide characters can be)."""
    data = json.dumps(status).encode()
    if len(data) > STATUS_LIMIT - LENGTH.size:
        essentials = {"exit_code": status["exit_code"], "error": str(status.get("error", ""))[:500]}
        data = json.dumps(essentials).encode()
    try:
        write_all(fd, LENGTH.pack(len(data)) + data)
    except OSError:
        os._exit(status["exit_code"])  # user code closed it: the exit status tells the agent


def reseed_random_generators():
    """Fresh seeds for this run. Python's `random` reseeds itself at fork;
    numpy's global generator does not, and the zygote imported it (pandas
    does), so without this every run of a container draws the same numbers."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def write_input_files(files):
    """The call's `files`, under /workspace before the code starts. The host
    checked each path (relative, inside /workspace) and the total size; a
    path that still escapes is refused here too."""
    root = os.path.realpath(WORKSPACE) if files else None
    for entry in files:
        path = os.path.realpath(os.path.join(root, entry["path"]))
        if not path.startswith(root + os.sep):
            raise ValueError(f"input file path escapes {WORKSPACE}: {entry['path']!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = base64.b64decode(entry["base64"]) if "base64" in entry else entry["text"].encode()
        with open(path, "wb") as f:
            f.write(data)


def receive_host_files(entries):
    """The call's host files (`host_files`, in order), their bytes read from
    the b"H" frames behind the request and written under /workspace by the
    agent before the code starts: through directory fds, never following a
    link (a session's earlier call may have left one), a file made anew,
    never written through. Every frame is read even after a failure, so the
    protocol stays in step. Returns None, or why not."""
    failure = None
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(WORKSPACE, flags)
    try:
        for entry in entries:
            fd = None
            if failure is None:
                try:
                    fd = make_host_entry(top, entry)
                except OSError as exc:
                    failure = f"{entry['path']}: {exc.strerror or exc}"
            left = entry.get("size", 0)
            while left > 0:
                frame = host.wait_frame()
                if frame is None:
                    os._exit(0)
                kind, data = frame
                if kind != ord("H") or len(data) > left:
                    sys.stderr.write("mcp-code-exec agent: host file bytes that do not match their sizes\n")
                    os._exit(3)
                left -= len(data)
                if fd is not None:
                    try:
                        write_all(fd, data)
                    except OSError as exc:  # e.g. /workspace full
                        failure = f"{entry['path']}: {exc.strerror or exc}"
                        os.close(fd)
                        fd = None
            if fd is not None:
                os.close(fd)
    finally:
        os.close(top)
    return failure


def make_host_entry(top, entry):
    """Makes the folders of `entry` under the fd `top`, then the folder
    itself, or the file anew (opened for writing, returned)."""
    *folders, name = entry["path"].split("/")
    directory = top
    try:
        for part in folders if not entry.get("dir") else [*folders, name]:
            inner = enter_folder(directory, part)
            if directory != top:
                os.close(directory)
            directory = inner
        if entry.get("dir"):
            return None
        try:
            os.unlink(name, dir_fd=directory)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(name, flags, 0o644, dir_fd=directory)
    finally:
        if directory != top:
            os.close(directory)


def enter_folder(dir_fd, name):
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:
        pass
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def like_a_script():
    """Makes the process look like `cd /workspace && python3 /run/code/main.py`
    (argv and path; `main_module` does the rest, per run)."""
    sys.argv = [SCRIPT]
    # The script's folder first, as Python does; then the working directory,
    # where the user's own modules are (the files a call brings land there).
    # The run's packages come before them (what `packages=` or pip installs).
    sys.path[0:1] = [SCRIPT_DIR, packages_runtime["site_dir"](), WORKSPACE]


def fresh_main_module():
    """A fresh, real `__main__` module in sys.modules (so pickle and
    multiprocessing find its functions and classes), from the script."""
    module = types.ModuleType("__main__")
    module.__dict__.update(
        __file__=SCRIPT,
        __cached__=None,
        __builtins__=builtins,
        __loader__=importlib.machinery.SourceFileLoader("__main__", SCRIPT),
    )
    sys.modules["__main__"] = module
    return module


def write_script(source):
    """/run/code/main.py, made anew; None, or why it could not be. The
    agent writes it before it hands the request to a fresh spare (no user
    code runs then): in the agent, whose pages are its own, it costs no
    copy-on-write faults, which it did in a fresh spare."""
    try:
        write_fresh(SCRIPT_DIR, SCRIPT_NAME, source.encode("utf-8", "surrogatepass"))
    except OSError as exc:
        return f"could not write {SCRIPT}: {exc}"
    return None


def write_fresh(directory_path, name, data):
    """`directory_path/name` made anew with `data`: whatever is at that name
    (the last run's link to anywhere, in a session a thread's) is removed,
    never written through."""
    directory = os.open(directory_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            os.unlink(name, dir_fd=directory)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o644, dir_fd=directory)
    finally:
        os.close(directory)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def rehearsal_for(last):
    """The request a new spare rehearses (rehearse), shaped as `last`, the
    request the container ran last (None before any: every install): a
    snippet, the display, and an MCP server and skills where `last` had
    them. A session's call, so that it ends as a notebook cell: atexit is
    not run (that would unregister its handlers) nor threading shut down
    (a preloaded thread pool registers with it; runs must still start
    threads). Encoded once per shape. The host sets both service-wide
    (servers configured, skills on), so the shape tells a run nothing of
    another's."""
    shape = (last is None or installs_mcp(last), last is None or bool(last.get("skills")))
    if shape not in rehearsals:
        servers, skills = shape
        request = {
            "code": WARMUP_CODE,
            "max_output_bytes": 1 << 20,
            "display": {"max_images": 1, "max_pixels": 1, "max_bytes": 1},
            "files_out": {"max_files": 1, "max_bytes": 1},
            "session": True,
        }
        if servers:
            request.update(servers=[REHEARSAL_SERVER], discovered=[{"name": REHEARSAL_SERVER["name"]}])
        if skills:
            request["skills"] = True
        rehearsals[shape] = json.dumps(request).encode()
    return rehearsals[shape]


def rehearse(request, channel):
    """Goes once through a request's path, as a run would (`request`: see
    rehearsal_for; read from the code pipe as a run's is), its output and
    status to /dev/null, so that the copy-on-write faults of that path
    (~100 pages here, each ~5 µs in a VM) and the interpreter's caches
    happen before a request, not during it. Nothing of it stays: what it
    put in sys.modules, sys.meta_path and builtins is taken out again, and
    what a run binds anew (`__main__`, the display's and the skills'
    bindings) the run's own installs replace. It touches no file: the spare
    rehearses while the agent still empties the directories the last run
    had."""
    like_a_script()
    # Counts, not copies: a copy of sys.modules touches every name's
    # refcount (~35 pages copied here, ~0.1 ms); what the rehearsal adds
    # is at the end of these dicts, which keep their insertion order.
    # Its last entries before are checked to be last again after: a
    # rehearsal that moved a key it did not add fails (the spare stays cold).
    modules, finders, names = len(sys.modules), list(sys.meta_path), len(vars(builtins))
    ends = last_key(sys.modules), last_key(vars(builtins))
    real = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = io.TextIOWrapper(io.FileIO(0, "w", closefd=False))  # fd 0 is /dev/null, opened read-write
    try:
        serve(request, fresh_main_module(), WARMUP_FILENAME, channel, 0)
    finally:
        sys.stdout, sys.stderr = real
        for name in newest(sys.modules, modules):
            del sys.modules[name]
        sys.meta_path[:] = finders
        for name in newest(vars(builtins), names):
            delattr(builtins, name)
    if (last_key(sys.modules), last_key(vars(builtins))) != ends:
        raise RuntimeError("the rehearsal moved a module or builtin it did not add")


def last_key(mapping):
    return next(reversed(mapping), None)


def newest(mapping, count):
    """The keys `mapping` gained since it held `count`, read from its end
    (a dict keeps insertion order), touching no other key."""
    return list(itertools.islice(reversed(mapping), max(len(mapping) - count, 0)))


def execute(source, env, filename):
    """Runs code in `env` as the interpreter runs a script; returns (exit
    code, status for the host). Uncaught exceptions go through sys.excepthook."""
    try:
        code = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(code, env))
        else:
            exec(code, env)
        return 0, {}
    except SystemExit as exc:
        return system_exit_code(exc), {}
    except BaseException as exc:
        report_uncaught(exc, filename)
        summary = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return 1, {"error": summary[:4000], "error_type": type(exc).__name__}


def interpreter_exit(exit_code, after_threads=None):
    """What the interpreter does after the main module, in its order: wait
    for non-daemon threads, (call `after_threads`,) run atexit handlers,
    flush the standard streams. A thread that never ends keeps the run going
    until its deadline."""
    threading = sys.modules.get("threading")
    # Nothing to join and nothing registered with threading: skip its shutdown
    # (it is most of the cost of ending a run that started no thread).
    idle = threading is None or (threading.active_count() == 1 and not getattr(threading, "_threading_atexits", 1))
    if not idle:
        try:
            threading._shutdown()
        except BaseException as exc:  # e.g. KeyboardInterrupt while joining
            report_uncaught(exc, SCRIPT)
    if after_threads is not None:
        after_threads()
    atexit._run_exitfuncs()  # prints "Exception ignored in atexit callback" itself
    if not flush_standard_streams():
        exit_code = exit_code or 120  # what Python exits with when stdout's flush fails
    return exit_code


def flush_standard_streams():
    """Flushes stdout and stderr; False when stdout's flush failed."""
    flushed = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            flushed = flushed and stream is not sys.stdout
    return flushed


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


def report_uncaught(exc, filename):
    """The user's sys.excepthook if they set one, else the traceback from the
    first frame of their code on (ours hidden), as the interpreter prints it."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    hook = sys.excepthook
    try:
        if hook is not sys.__excepthook__:
            hook(type(exc), exc, tb)
        else:
            traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    except Exception:
        pass


# ---------------------------------------------------------------- the zygote


def zygote_main(channel, preload, spared, reaped_pipe, huge_pages):
    """Imports the preloaded modules (then, with `huge_pages`, moves its
    memory into huge pages), then forks spares on the agent's
    request, reaps everything below it, kills everything but `spared` (the
    light zygote's pid, if any) at reset. `reaped_pipe`, between the two
    zygotes, if there are two: the light one writes a byte into it each time
    it reaps, the other waits on it while it kills (the zombies the light
    zygote reaps are not its children). It reads nothing but the agent's
    one-byte commands and the pipe fds that come with them."""
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # only the agent speaks the protocol; fd 2 stays for crash reports
    inherited = private_anonymous() if huge_pages else ()
    missing = preload_modules(preload)
    shared = shared_writable_mappings()
    if shared:
        reason = (
            "after the preload (MCP_BRIDGE_PRELOAD) the zygote maps memory shared and writable, which every "
            f"run would share with every other: {', '.join(shared[:4])}; preload fewer modules"
        )
        channel.send(b"X" + reason.encode()[: ZYGOTE_MESSAGE_LIMIT - 1])
        os._exit(0)
    # Inherited by every spare: no run can make a queue the reset could not find.
    queues = None if os.path.isdir("/dev/mqueue") else refuse_message_queues()
    while len(hello := json.dumps({"missing": missing, "queues": queues}).encode()) >= ZYGOTE_MESSAGE_LIMIT:
        missing = missing[: len(missing) // 2]
    channel.send(b"H" + hello)
    # gVisor refuses (EINVAL, measured: it takes it from PID 1 only): the
    # run's orphans then go to the agent, which reaps them while this kills
    # (Zygote.wait_reply), or kill(-1) would keep finding their zombies.
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    baseline = integrity()
    spares = set()

    def reap():
        for pid, wait_status in reaped():
            if pid in spares:
                spares.discard(pid)
                channel.send(b"E%d %d" % (pid, os.waitstatus_to_exitcode(wait_status)))
            if reaped_pipe is not None and not spared:
                try:
                    os.write(reaped_pipe, b".")
                except BlockingIOError:
                    pass  # the killer has bytes to wake on already

    def kill_all():
        # kill(-1) reaches every process but PID 1 and the caller, at once
        # (nothing forks past it). As the subreaper this process inherits
        # every orphan, so it reaps them all and kill() finds nothing once
        # every other process is gone. With a light zygote to spare, kill(-1)
        # stops everything instead (nothing forks any more), everything else
        # is killed by pid, and the light zygote continues, to reap its own.
        deadline = time.monotonic() + RESET_DEADLINE_S
        pause = 0.0005
        while True:
            if not kill_everyone_but(spared):
                return True
            woken = [wake_r, reaped_pipe] if spared and reaped_pipe is not None else [wake_r]
            select.select(woken, [], [], pause)
            pause = min(pause * 2, 0.05)
            for fd in woken:
                drain(fd)
            reap()
            if time.monotonic() > deadline:
                return False

    gc.collect()
    immortalize_objects()
    gc.freeze()  # forked spares then share these pages untouched by the GC
    if huge_pages:
        collapse_into_huge_pages(inherited)
    while True:
        ready, _, _ = select.select([channel, wake_r], [], [])
        if wake_r in ready:
            drain(wake_r)
            reap()
        if channel not in ready:
            continue
        message, fds, _, _ = socket.recv_fds(channel, 64, 6)
        if not message:
            os._exit(0)  # the agent is gone
        # K: kill everything, say so, then (like S) fork the next spare, so
        # the agent empties the directories while the spare is forked.
        # It checks itself too: when no spare is forked (the last run was
        # a light spare's), no S would.
        if message == b"K":
            if not kill_all():
                channel.send(b"Xprocesses survived SIGKILL")
                message = b""
            elif integrity() != baseline:
                channel.send(b"Xthe zygote's limits or scheduling were changed")
                message = b""
            else:
                channel.send(b"k")
        if message in (b"S", b"K") and len(fds) == 6:
            if integrity() != baseline:
                channel.send(b"Xthe zygote's limits or scheduling were changed")
            else:
                pid = os.fork()
                if pid == 0:
                    run_spare(fds)
                spares.add(pid)
                channel.send(b"P%d" % pid)
        elif message not in (b"", b"K"):  # K without fds: the kill only
            channel.send(b"Xunknown command")
        for fd in fds:
            os.close(fd)


def kill_everyone_but(spared):
    """SIGKILL to every process but PID 1, the caller and `spared`; False
    when there was none (a zombie counts until its parent reaps it)."""
    if not spared:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True
    keep = {1, os.getpid(), *spared}

    def others():
        return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if pid not in keep]

    listed = others()
    # Nothing runs when all are zombies: only reaping is left (or nothing).
    running = not all(map(is_zombie, listed))
    if running:
        signal_all(signal.SIGSTOP)
        for pid in others():  # listed again: what forked before the stop is there too
            kill(pid)
    for pid in spared:  # to reap its own (stopped by a run, or by the SIGSTOP)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    return bool(listed)


def is_zombie(pid):
    """Whether `pid` has exited (a zombie, or gone already)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2][1:2] in (b"Z", b"X", b"")
    except OSError:
        return True


def preload_modules(names):
    """Imports `names` once, so that `import pandas` in a run is a dictionary
    lookup, and warms them; returns the ones that could not be imported."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # absent from this image, or broken in it
            missing.append(f"{name} ({type(exc).__name__}: {exc})"[:200])
    for name, snippet in PRELOAD_WARM_UPS.items():
        if name in sys.modules:
            exec(compile(snippet, WARMUP_FILENAME, "exec"), {"__name__": "__warm_up__"})
    # Native thread pools (OpenBLAS) started by the imports are shut down
    # around each fork by their own handlers and restarted in the run.
    warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded", category=DeprecationWarning)
    return missing


def shared_writable_mappings(maps="/proc/self/maps"):
    """What this process maps shared and writable (`rw-s`: MAP_SHARED,
    SysV or POSIX shared memory): every spare forked from it would share it
    with every other, across runs, and no reset empties it."""
    found = []
    with open(maps) as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) > 1 and fields[1][1:2] == "w" and fields[1][3:4] == "s":
                found.append(fields[5].strip() if len(fields) > 5 else "[anonymous]")
    return found


def private_anonymous(maps="/proc/self/maps"):
    """This process's private writable anonymous memory (the heap, the
    allocators' arenas), as (start, end)."""
    found = []
    with open(maps) as f:
        for line in f:
            fields = line.split(maxsplit=5)
            name = fields[5].strip() if len(fields) > 5 else ""
            if len(fields) > 1 and fields[1][1:2] == "w" and fields[1][3:4] == "p" and name in ("", "[heap]"):
                found.append(tuple(int(bound, 16) for bound in fields[0].split("-")))
    return found


def huge_page_ranges(maps="/proc/self/maps", before=()):
    """The whole 2 MiB pages of this process's private writable anonymous
    memory, as (start, length), but for those that touch memory it had
    `before` (private_anonymous at an earlier moment)."""
    ranges = []
    for start, end in private_anonymous(maps):
        page = -(-start // HUGE_PAGE) * HUGE_PAGE
        while page + HUGE_PAGE <= end:
            if not any(old_start < page + HUGE_PAGE and page < old_end for old_start, old_end in before):
                if ranges and sum(ranges[-1]) == page:
                    ranges[-1] = (ranges[-1][0], ranges[-1][1] + HUGE_PAGE)
                else:
                    ranges.append((page, HUGE_PAGE))
            page += HUGE_PAGE
    return ranges


def immortal_refcount():
    """The reference count that marks an object immortal in this build,
    read from None, when it is the one of CPython 3.12 and 3.13 (on a 64-bit
    little-endian build with the GIL: the low 32 bits all set, which
    Py_INCREF and Py_DECREF leave untouched); else None."""
    if sys.version_info[:2] not in ((3, 12), (3, 13)) or sys.byteorder != "little" or sys.maxsize < 1 << 32:
        return None
    if "t" in sys.abiflags:  # free-threaded: another object header
        return None
    value = ctypes.c_uint32.from_address(id(None)).value
    return value if value == 0xFFFFFFFF else None


def immortalize_objects():
    """Makes every object reachable from the GC-tracked ones immortal (PEP
    683: the interpreter then never writes its reference count), as
    Instagram's pre-fork servers do: a spare's every read of a shared object (a call,
    an attribute, a module's global) was a write to its count, and each
    write to a page still shared with the zygote a copy-on-write fault
    (~5 µs here). Measured in a forked child of the bare image: a spare's
    faults from fork to its exit ~625 -> ~450. The objects are never freed
    in a spare (the zygote had them alive; a spare ends with os._exit);
    `sys.getrefcount` of one returns the immortal count, as it does for None
    (README lists it). A build this does not know (see immortal_refcount)
    keeps its counts. The agent calls it before it forks the zygotes, and
    each zygote after its preload, for what it imported. Returns how many
    objects it changed."""
    value = immortal_refcount()
    if value is None:
        return 0
    changed = 0
    layer = gc.get_objects()  # before the view: it is not among them
    # The counts, as 32-bit words of the lowest 256 TiB of the address
    # space (a 48-bit user space: x86-64's, arm64's), indexed by address:
    # ~0.17 µs a count where a ctypes object for each took ~0.66 (the data
    # image's zygote holds ~176,000 objects: 300 -> 105 ms). Only the
    # addresses of live objects are read or written; an object above keeps
    # its count. Released on the way out, whatever happens.
    whole = (ctypes.c_char * (1 << 48)).from_address(0)
    with memoryview(whole) as raw, raw.cast("B") as octets, octets.cast("I") as counts:
        while layer:
            # The mark is the visit: an object immortal already (None,
            # interned strings, what the agent's pass changed) is not walked
            # again, and no set of the visited is kept.
            fresh = []
            for obj in layer:
                word = id(obj) >> 2
                if word < len(counts) and counts[word] != value:
                    counts[word] = value
                    fresh.append(obj)
            changed += len(fresh)
            layer = gc.get_referents(*fresh)
    return changed


def collapse_into_huge_pages(before=()):
    """Backs the zygote's anonymous memory with huge pages where the kernel
    can (MADV_COLLAPSE): a fork then copies one page-table entry for each
    2 MiB instead of 512 (measured in the data image: 28-30 MiB of ~100
    collapsed, the CPU of a fork and a run's exit about a fifth less).
    Only memory mapped since `before` (the zygote's start): what it had
    then it shares with the agent (and the light zygote with the agent
    alone), and a collapse would copy it, making each page the agent's own
    (measured: 11 MiB more of the agent's memory private, 19 MiB more of an
    idle sandbox's).
    A copy-on-write fault in a run still copies 4 KiB (the kernel splits the
    huge page), and the ranges are not marked MADV_HUGEPAGE, so a run's own
    allocations stay in small pages. Best effort: a kernel before 6.1,
    gVisor, or a range the kernel cannot collapse refuses (EINVAL, EAGAIN),
    and the zygote forks as it would have. Returns the bytes collapsed."""
    collapsed = 0
    for start, length in huge_page_ranges(before=before):
        if libc.madvise(start, length, MADV_COLLAPSE) == 0:
            collapsed += length
    return collapsed


def run_spare(fds):
    try:
        spare_main(*fds)
    except BaseException:
        # An agent bug, not the user's: show it in the run's stderr.
        traceback.print_exc()
    finally:
        os._exit(70)


def drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


class Zygote:
    """The agent's handle on the zygote: commands, replies, spare exits."""

    def __init__(self, preload, huge_pages, spared=(), reaped_pipe=None, other_end=None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            if other_end is not None:
                os.close(other_end)
            try:
                zygote_main(theirs, preload, spared, reaped_pipe, huge_pages)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(71)
        theirs.close()
        self.pid = pid
        self.channel = ours
        self.fd = ours.fileno()
        self.dead = False
        # Exit codes of spares, by pid, as the zygote reported them.
        self.exits = {}
        hello = self.wait_reply(ZYGOTE_START_TIMEOUT_S)
        hello = json.loads(hello[1:])
        # Preloaded modules that this image lacks (the host warns about them).
        self.missing = hello["missing"]
        # Why POSIX message queues are not refused to runs where they cannot
        # be listed, or None (reset_impossible).
        self.queues = hello["queues"]

    def request(self, message, fds=()):
        """Sends a command; returns the reply, or raises ZygoteLost. While
        the zygote kills (K), the orphans it kills are reaped here: where it
        cannot be the child subreaper (gVisor) they are this process's."""
        try:
            socket.send_fds(self.channel, [message], list(fds))
        except OSError as exc:
            raise ZygoteLost(f"the zygote is gone ({exc})") from None
        return self.wait_reply(ZYGOTE_REPLY_TIMEOUT_S, reap=message == b"K")

    def wait_reply(self, timeout_s, reap=False):
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if reap:
                for _ in reaped():
                    pass
                remaining = min(remaining, ORPHAN_REAP_S)
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                if reap and time.monotonic() < deadline:
                    continue
                raise ZygoteLost("the zygote did not answer (stopped?)")
            reply = self.receive()
            if reply is None:
                raise ZygoteLost("the zygote died")
            if reply[:1] == b"X":
                raise ZygoteLost(reply[1:].decode(errors="replace"))
            if reply[:1] != b"E":
                return reply

    def receive(self):
        """One message (exit reports are recorded); None when the zygote died."""
        try:
            message = self.channel.recv(ZYGOTE_MESSAGE_LIMIT)
        except OSError:
            message = b""
        if not message:
            self.dead = True
            return None
        if message[:1] == b"E":
            pid, code = message[1:].split()
            self.exits[int(pid)] = int(code)
        return message


class ZygoteLost(Exception):
    """The zygote cannot serve any more: the container must be recycled."""


# ---------------------------------------------------------------- the agent


class Spare:
    """A spare forked by the zygote, with the agent's ends of its pipes.
    `rehearsal` is the first message on its code pipe, written before the
    fork (rehearsal_for). `command` is b"S" (fork one) or b"K" (kill
    everything first: the reset); `between()` runs after the zygote's first
    reply, while it forks, and returns why the container cannot be reused,
    or None."""

    def __init__(self, zygote, rehearsal, command=b"S", between=None):
        code_r, self.code_w = os.pipe()
        write_parts(self.code_w, (LENGTH.pack(len(rehearsal)), rehearsal))  # far below a pipe's 64 KiB
        self.status_r, status_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.call_r, call_w = os.pipe()
        answer_r, self.answer_w = os.pipe()
        theirs = (code_r, status_w, out_w, err_w, call_w, answer_r)
        try:
            reply = zygote.request(command, theirs)
            if command == b"K":
                failure = between()
                if failure:
                    raise ZygoteLost(failure)
                reply = zygote.wait_reply(FORK_REPLY_TIMEOUT_S)
        except ZygoteLost:
            self.close()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        self.pid = int(reply[1:])
        self.zygote = zygote
        zygote.exits.clear()
        for fd in (self.out_r, self.err_r, self.status_r, self.call_r, self.answer_w):
            os.set_blocking(fd, False)
        # Requests run so far (more than one only in a session), the files
        # under out/ as the last run left them (send_output_files), and the
        # rest of an answer the last call's end cut (CallRelay.cut_answer).
        self.calls = 0
        self.returned = OutFiles()
        self.cut_answer = b""

    def exited(self, zygote):
        """The spare's exit code if it has exited (as far as we heard), else None."""
        if zygote.dead:
            return orphan_exit_code(self.pid)
        return zygote.exits.get(self.pid)

    def exited_between_calls(self, zygote):
        """The exit code of a session's spare that died since its last call
        (a thread's os._exit, the OOM killer), or None if it lives."""
        while not zygote.dead and select.select([zygote.fd], [], [], 0)[0]:
            zygote.receive()
        return self.exited(zygote)

    def discard_leftovers(self):
        """What a session's processes wrote after its last call ended, before
        they were stopped (stop_session), is no call's output (nor a call,
        nor a status): dropped, all of it, since nothing writes while they
        are stopped (at most what the pipes hold); the deadline only bounds
        a writer the stop would have missed."""
        deadline = time.monotonic() + LEFTOVERS_DEADLINE_S
        for fd in (self.out_r, self.err_r, self.call_r, self.status_r):
            while read_some(fd) and time.monotonic() < deadline:
                pass
        wipe_children_quietly(IMAGE_DIR)

    def wait_warm(self, timeout_s):
        """True once the spare has warmed up and waits for code."""
        ready, _, _ = select.select([self.status_r], [], [], timeout_s)
        return bool(ready) and read_some(self.status_r) == WARM

    def last_words(self):
        """The last line a spare that did not warm up wrote to its stderr
        (run_spare's traceback of an agent bug: no user code ran there)."""
        data = read_some(self.err_r) or b""
        lines = data.decode(errors="replace").strip().splitlines()
        return lines[-1][:LAST_WORDS_LIMIT] if lines else ""

    def close(self):
        for fd in (self.code_w, self.status_r, self.out_r, self.err_r, self.call_r, self.answer_w):
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
            data = data[len(head) :]
        self.dropped += len(data)


class CallRelay:
    """Tool calls of the run: JSON lines from the child become b"C" frames;
    b"A" frames from the host become lines to the child, written as the
    child reads them (never blocking the loop that drains its output: the
    relay registers the answer pipe with `poller` while it has answers).

    A call line over MAX_CALL_BYTES (written by hand, past the mcp
    package's own check) is dropped as it comes and answered with an error
    (with its id when its head has one, as the mcp package writes it); the
    run goes on. An answer the run's end cuts (the child had read part of
    it) is `cut_answer()`: a session's next call writes it first, or the
    child's reader would take the next answer as part of it."""

    def __init__(self, answer_w, forward, poller=None, cut=b""):
        self.answer_w = answer_w
        self.forward = forward
        self.poller = poller
        self.partial = bytearray()
        # An oversized call line is being dropped, and its id if it had one.
        self.oversized = False
        self.oversized_id = None
        self.pending = bytearray()
        # The last write ended inside an answer.
        self.mid_answer = False
        if cut:
            self.queue(cut)
            self.mid_answer = True

    def forward_calls(self, data):
        # Only the new chunk is searched: a 16 MiB call costs one pass.
        end = data.rfind(b"\n")
        if end < 0:
            self.take(data)
            return
        first, *lines = data[:end].split(b"\n")
        self.take(first)
        self.end_line()
        for line in lines:
            self.take(line)
            self.end_line()
        self.take(data[end + 1 :])

    def take(self, data):
        """Part of the current call line."""
        if self.oversized:
            return
        self.partial += data
        if len(self.partial) > MAX_CALL_BYTES:
            head = CALL_ID.match(self.partial[:64])
            self.oversized, self.oversized_id = True, int(head[1]) if head else None
            self.partial = bytearray()

    def end_line(self):
        if self.oversized:
            error = f"the call is over {MAX_CALL_BYTES >> 20} MiB, the most a call may carry: refused"
            self.queue_answer(json.dumps({"id": self.oversized_id, "ok": False, "error": error}).encode())
            self.oversized = False
        else:
            self.forward(bytes(self.partial))
        self.partial = bytearray()

    def queue_answer(self, payload):
        self.queue(payload + b"\n")

    def queue(self, data):
        if not self.pending and self.poller is not None:
            self.poller.register(self.answer_w, select.POLLOUT)
        self.pending += data

    def write_answers(self):
        try:
            written = os.write(self.answer_w, self.pending)
        except BlockingIOError:
            return
        except OSError:
            written = len(self.pending)  # the child stopped listening
        if written:
            self.mid_answer = self.pending[written - 1] != ord("\n")
            del self.pending[:written]
        if not self.pending and self.poller is not None:
            self.poller.unregister(self.answer_w)

    def cut_answer(self):
        """The rest of the answer the child is in the middle of, if any."""
        if not self.mid_answer:
            return b""
        return bytes(self.pending[: self.pending.index(b"\n") + 1])


# While the zygote is alive it reports the spare's exit; once it died the
# spare is the agent's own child (it inherits orphans) and is polled for.
ORPHAN_POLL_MS = 50


def run(spare, zygotes, payload, request):
    """Runs one request on `spare` and sends its D frame. Returns whether
    the spare lives on for the session's next call."""
    zygote = spare.zygote
    started = time.monotonic_ns()
    session = bool(request.get("session"))
    if spare.calls:
        code = spare.exited_between_calls(zygote)
        if code is not None:
            # The code did not run: the host starts the session anew.
            send_json(ord("D"), {"exit_code": code, "session_gone": True})
            return False
        spare.discard_leftovers()
        signal_all(signal.SIGCONT)  # the session runs again (see stop_session)
    spare.calls += 1
    oom_before = oom_counter.read()
    outputs = {
        spare.out_r: Output(ord("O"), request["max_output_bytes"]),
        spare.err_r: Output(ord("E"), request["max_output_bytes"]),
    }
    try:
        write_parts(spare.code_w, (LENGTH.pack(len(payload)), payload))  # one write: one wake-up
    except OSError:
        pass  # the child is gone; its exit status says why
    if not session:
        os.close(spare.code_w)
        spare.code_w = -1

    # The run is over when the child sends its status (the fast, usual way)
    # or when it exits (killed, os._exit, crash).
    poller = select.poll()
    relay = CallRelay(spare.answer_w, lambda line: send(ord("C"), line), poller, spare.cut_answer)
    streams = streams_runtime["Streams"](network.listener, poller, send)
    for fd in (*outputs, spare.status_r, zygote.fd, spare.call_r, 0):
        poller.register(fd, select.POLLIN)
    statuses = StatusReader()
    exit_code = None
    while exit_code is None:
        events = poller.poll(ORPHAN_POLL_MS if zygote.dead else None)
        if zygote.dead:
            exit_code = orphan_exit_code(spare.pid)
        streams.new_batch()
        accept = False
        for fd, mask in events:
            if streams.owns(fd):
                streams.event(fd, mask)
                continue
            if fd == network.listener.fileno():
                # After the batch: a connection accepted now could take the
                # fd of a stream closed in it, whose stale events would follow.
                accept = True
                continue
            if fd == zygote.fd:
                if zygote.receive() is None:
                    poller.unregister(fd)
                exit_code = zygote.exits.get(spare.pid, exit_code)
                continue
            if fd == 0:
                relay_answers(relay, streams)
                continue
            if fd == spare.answer_w:
                relay.write_answers()
                continue
            data = read_some(fd)
            if data is None:
                continue
            if fd == spare.status_r:
                if not data:
                    poller.unregister(fd)
                elif statuses.feed(data) is not None:
                    exit_code = statuses.status["exit_code"]
                elif statuses.broken and session:
                    # User code garbled the pipe: no status of this session
                    # can be read any more; its spare's exit decides.
                    kill(spare.pid)
            elif not data:
                poller.unregister(fd)
            elif fd == spare.call_r:
                relay.forward_calls(data)
            else:
                outputs[fd].forward(data)
        if accept:
            streams.accept()
    # The run's connections end with it (the host ends its side at D).
    streams.close_all()
    # Exited before we read its status (both became ready at once): read it now.
    while statuses.status is None and (data := read_some(spare.status_r)):
        statuses.feed(data)
    for fd, output in outputs.items():
        budget = DRAIN_LIMIT
        while budget > 0:
            data = read_some(fd)
            if not data:
                break
            budget -= len(data)
            output.forward(data)

    status = statuses.status or {}
    kept = session and "exit_code" in status and not spare.exited(zygote)
    if kept:
        stop_session(zygotes)  # at once: nothing of it runs while the answer is sent
    done = {
        "exit_code": exit_code,
        "oom": oom_counter.read() > oom_before or status.get("error_type") == "MemoryError",
        "error": status.get("error"),
        "error_type": status.get("error_type"),
        "dropped_stdout": outputs[spare.out_r].dropped,
        "dropped_stderr": outputs[spare.err_r].dropped,
    }
    if "display" in request:
        done.update(send_images(request["display"], status))
        if session:
            wipe_children_quietly(IMAGE_DIR)  # the next call's images are its own
    if "files_out" in request:
        done.update(send_output_files(request["files_out"], spare.returned, request.get("resend", ())))
    if "packages" in status:
        done["packages"] = status["packages"]
    if session:
        done["kept"] = kept
    done["agent_us"] = (time.monotonic_ns() - started) // 1000
    send_json(ord("D"), done)
    if kept:
        spare.cut_answer = relay.cut_answer()
    return kept


def stop_session(zygotes):
    """Stops every process of a session after its call (everything but PID
    1 and the zygotes), so that nothing of it runs until its next call:
    background threads and processes escape no time limit. `kill(-1)` also
    reaches what forks meanwhile; the zygotes, stopped too, are continued at
    once (a pending SIGSTOP is discarded by a SIGCONT)."""
    signal_all(signal.SIGSTOP)
    for zygote in zygotes:
        if not zygote.dead:
            os.kill(zygote.pid, signal.SIGCONT)


def signal_all(signum):
    try:
        os.kill(-1, signum)
    except ProcessLookupError:
        pass  # no other process


class StatusReader:
    """The spare's status messages (4-byte length, JSON). User code can
    write there too: a message without an exit code is skipped, one longer
    than the limit ends the reading (the exit status then decides)."""

    def __init__(self):
        self.buffer = bytearray()
        self.status = None
        self.broken = False

    def feed(self, data):
        """Takes bytes; returns the status once a whole, valid one arrived."""
        if self.broken or self.status is not None:
            return self.status
        self.buffer += data
        while len(self.buffer) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(self.buffer)
            if size > STATUS_LIMIT:
                self.broken = True
                self.buffer.clear()
                return None
            if len(self.buffer) < LENGTH.size + size:
                return None
            status = parse_status(bytes(self.buffer[LENGTH.size : LENGTH.size + size]))
            del self.buffer[: LENGTH.size + size]
            if "exit_code" in status:
                self.status = status
                return status
        return None


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone: its exit is on its way


def send_images(bounds, status):
    """The run's images (display.py wrote them, in order) as b"I" frames,
    within the bounds again: user code could have written there too."""
    dropped = status.get("images_dropped", 0)
    notes = list(status.get("image_notes", []))
    invalid = 0
    sent = 0
    for data in regular_files(IMAGE_DIR, bounds["max_bytes"], IMAGE_MAX_ENTRIES):
        longest = max(png_size(data)) if data is not None else 0
        if sent >= bounds["max_images"]:
            dropped += 1
        elif not 0 < longest <= bounds["max_pixels"]:
            invalid += 1
        else:
            send(ord("I"), data)
            sent += 1
    if invalid:
        notes.append(f"{invalid} image files were not PNGs within the bounds: dropped")
    return {"images_dropped": dropped, "image_notes": notes}


def png_size(data):
    """(width, height) from a PNG's header; (0, 0) when it is not one."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return 0, 0
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def regular_files(directory, limit, max_entries):
    """The bytes of each regular file of `directory`, by name, opened
    without following links; None for one over `limit` bytes."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        with os.scandir(dir_fd) as scan:
            names = sorted(entry.name for entry in itertools.islice(scan, max_entries))
        for name in names:
            fd = open_no_follow(name, dir_fd)
            if fd is None:
                continue
            try:
                info = os.fstat(fd)
                if stat.S_ISREG(info.st_mode):
                    yield os.read(fd, info.st_size) if info.st_size <= limit else None
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


def open_no_follow(name, dir_fd):
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None  # a symlink (ELOOP), or gone


class OutFiles:
    """What /workspace/out held at the last walk (a session's calls return
    only what changed since): each regular file's signature, and when."""

    # Timestamps move in clock ticks (jiffies on kernels before 6.13): a
    # file written within a tick of the last walk may change again without
    # any time stamp moving, so its signature is not trusted.
    COARSE_CLOCK_NS = 20_000_000

    def __init__(self):
        self.signatures = {}
        self.walked_ns = 0
        self.resend = frozenset()

    def unchanged(self, name, signature):
        return self.signatures.get(name) == signature and signature[2] < self.walked_ns - self.COARSE_CLOCK_NS


def send_output_files(bounds, before, resend=()):
    """Regular files under /workspace/out, as b"P" frames (2-byte path
    length, the path, the bytes), within the per-run bounds. Walked through
    directory fds with O_NOFOLLOW: a symlink or a path swapped while we read
    cannot make the agent read anything outside out/. A file that `before`
    (the spare's last walk) shows unchanged is not sent again; `before`
    becomes this walk; the files `resend` names are sent even so."""
    budget = {"files": bounds["max_files"], "bytes": bounds["max_bytes"], "entries": OUT_MAX_ENTRIES}
    dropped = {"files_dropped": 0, "files_dropped_bytes": 0}
    walk = OutFiles()
    walk.walked_ns = time.time_ns()
    walk.resend = frozenset(resend)
    try:
        top = os.open(OUT_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        top = None
    if top is not None:
        try:
            send_tree(top, "", budget, dropped, OUT_MAX_DEPTH, (before, walk))
        finally:
            os.close(top)
    before.signatures, before.walked_ns = walk.signatures, walk.walked_ns
    return dropped


def send_tree(dir_fd, prefix, budget, dropped, depth, signatures):
    with os.scandir(dir_fd) as scan:
        entries = sorted(itertools.islice(scan, max(budget["entries"], 0)), key=lambda e: e.name)
    budget["entries"] -= len(entries)
    before, walk = signatures
    for entry in entries:
        fd = open_no_follow(entry.name, dir_fd)
        if fd is None:
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                if depth > 0:
                    send_tree(fd, prefix + entry.name + "/", budget, dropped, depth - 1, signatures)
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            name = prefix + entry.name
            # ctime moves on every write and cannot be set back by user code.
            signature = (info.st_ino, info.st_size, info.st_ctime_ns, info.st_mtime_ns)
            walk.signatures[name] = signature
            if name not in walk.resend and before.unchanged(name, signature):
                continue
            try:
                path = name.encode()  # strict: the host takes UTF-8 paths only
            except UnicodeEncodeError:
                path = b""
            if not path or len(path) > MAX_PATH_BYTES or budget["files"] <= 0 or info.st_size > budget["bytes"]:
                dropped["files_dropped"] += 1
                dropped["files_dropped_bytes"] += info.st_size
                continue
            data = os.read(fd, info.st_size)  # a regular file on tmpfs: one read
            send(ord("P"), len(path).to_bytes(2, "big") + path + data)
            budget["files"] -= 1
            budget["bytes"] -= len(data)
        finally:
            os.close(fd)


def orphan_exit_code(pid):
    """The exit code of a spare whose zygote died, once it exited."""
    try:
        reaped, wait_status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        # Not our child yet (the kernel hands orphans over after the parent's
        # files, its socket included, are closed), or reaped by the zygote.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -signal.SIGKILL  # reaped by the zygote, which died before saying how
        return None
    return os.waitstatus_to_exitcode(wait_status) if reaped else None


def relay_answers(relay, streams):
    """Reads host frames during a run: answers queued for the child, stream
    frames to their streams."""
    host.feed()
    if host.closed:
        os._exit(0)
    while (frame := host.next_frame()) is not None:
        kind, payload = frame
        if kind == ord("A"):
            relay.queue_answer(payload)
        elif kind in STREAM_KINDS:
            streams.frame(kind, payload)
        else:
            sys.stderr.write(f"mcp-code-exec agent: unexpected frame kind {kind} during a run\n")
            os._exit(3)


def read_some(fd):
    """A chunk, b"" at end of file, or None when nothing is there right now."""
    try:
        return os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return None


def parse_status(data):
    """The child's report, if whole and well-formed (user code can write to
    it: 16 KiB of nested brackets included, which the JSON decoder refuses
    with a RecursionError)."""
    try:
        status = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(status, dict):
        return {}
    clean = {k: v for k, v in status.items() if k in ("error", "error_type") and isinstance(v, str)}
    code = status.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255:
        clean["exit_code"] = code
    dropped = status.get("images_dropped")
    if isinstance(dropped, int) and not isinstance(dropped, bool) and dropped >= 0:
        clean["images_dropped"] = dropped
    notes = status.get("image_notes")
    if isinstance(notes, list):
        clean["image_notes"] = [note[:300] for note in notes[:8] if isinstance(note, str)]
    packages = parse_installed(status.get("packages"))
    if packages is not None:
        clean["packages"] = packages
    return clean


def parse_installed(packages):
    """What `packages` installed, as the child said (names and versions,
    bounded), or None when it is not that shape."""
    if not isinstance(packages, dict) or not isinstance(packages.get("installed"), list):
        return None
    duration = packages.get("duration_ms")
    if not isinstance(duration, int) or isinstance(duration, bool) or duration < 0:
        return None

    def plain(text, limit):
        return "".join(c for c in text[:limit] if c.isprintable())

    installed = [
        {"name": plain(item["name"], 200), "version": plain(item["version"], 100)}
        for item in packages["installed"][:256]
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("version"), str)
    ]
    # The wheels pip chose: the host keeps only those it served this run.
    wheels = [
        {"filename": item["filename"][:200], "sha256": item["sha256"][:64]}
        for item in (packages.get("wheels") if isinstance(packages.get("wheels"), list) else [])[:256]
        if isinstance(item, dict) and isinstance(item.get("filename"), str) and isinstance(item.get("sha256"), str)
    ]
    return {"installed": installed, "duration_ms": min(duration, 10**9), "wheels": wheels}


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


# ---------------------------------------------------------------- the reset


def reset(spares, baseline):
    """After a run: the zygote kills every other process (the light zygote
    aside), then forks the next spares while the agent empties the
    directories and checks itself. Returns None when the container is as it
    was before the run, else why not."""

    def clean():
        for _ in reaped():  # the zygote, if it died, and the last orphans (gVisor)
            pass
        spares.close()
        streams_runtime["refuse_waiting"](network.listener)
        failure = fresh_places()
        if failure:
            return failure
        if integrity() != baseline:
            return "the agent's limits or scheduling were changed"
        return None

    return spares.refill(clean)


def reset_impossible(queues, sysv):
    """Why this container cannot be reset, or None; then it serves one run.
    `queues`: why POSIX message queues, which cannot be listed without
    /dev/mqueue, are not refused to runs (the zygote's refuse_message_queues),
    or None. `sysv`: why SysV IPC objects cannot be found to remove
    (sysv_unlistable), or None."""
    reasons = [reason for reason in (queues, sysv) if reason]
    return "; ".join(reasons) or None


def refuse_message_queues():
    """Makes mq_open fail with EPERM in this process and every process it
    forks (a seccomp filter: no run can undo it), where queues cannot be
    listed to remove (no /dev/mqueue: gVisor, measured); other architectures'
    and x32 system calls are refused too. None, or why not."""
    if MQ_OPEN is None:
        return f"/dev/mqueue missing, and POSIX message queues cannot be refused on {platform.machine()}"
    program = (
        (0x20, 0, 0, 4),  # load the architecture
        (0x15, 1, 0, AUDIT_ARCH),
        (0x06, 0, 0, 0x80000000),  # another one: kill the process
        (0x20, 0, 0, 0),  # load the system call number
        (0x35, 3, 0, 0x40000000),  # x32: ENOSYS
        (0x15, 1, 0, MQ_OPEN),
        (0x06, 0, 0, 0x7FFF0000),  # allow
        (0x06, 0, 0, 0x00050000 | errno.EPERM),
        (0x06, 0, 0, 0x00050000 | errno.ENOSYS),
    )
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *insn) for insn in program))
    fprog = ctypes.create_string_buffer(struct.pack("HxxxxxxP", len(program), ctypes.addressof(filters)))
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        return f"/dev/mqueue missing, and POSIX message queues cannot be refused: {os.strerror(ctypes.get_errno())}"
    librt = ctypes.CDLL("librt.so.1", use_errno=True)
    if librt.mq_open(b"/mcp-code-exec-probe", os.O_RDONLY, 0, None) != -1 or ctypes.get_errno() != errno.EPERM:
        return "/dev/mqueue missing, and a seccomp filter did not refuse mq_open"
    return None


def fresh_places(sysv=True):
    """Every writable place empty, as at start, with the sandbox's trust
    (MCP_BRIDGE_CA_BUNDLE) in place again; None, or why not. `sysv`: SysV IPC
    removed too (not at the start of a container that serves one run because
    its objects cannot be found)."""
    failure = wipe_all(sysv)
    if failure is None:
        try:
            packages_runtime["prepare"]()
        except OSError as exc:
            failure = f"could not make the package directory: {exc}"
    if failure is None and network.trust:
        try:
            write_fresh(SCRIPT_DIR, TRUST_NAME, network.trust)
        except OSError as exc:
            failure = f"could not write {TRUST}: {exc}"
    return failure


def wipe_all(sysv=True):
    """Empties every writable place and removes SysV IPC; None, or why not."""
    for path in WIPE_DIRS:
        try:
            wipe_children(path)
        except FileNotFoundError:
            continue
        except (OSError, RecursionError) as exc:
            return f"could not empty {path}: {exc}"
    return remove_sysv_ipc() if sysv else None


def reaped():
    """The children that have exited, reaped now: (pid, wait status) each."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, wait_status


def wipe_children_quietly(path):
    try:
        wipe_children(path)
    except (OSError, RecursionError):
        pass  # the reset that ends the session empties it, or says why not


def wipe_children(path):
    """Empties the directory `path` through directory fds, never following a
    link: user code (a session's threads) may swap one in for a directory
    while PID 1 walks."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        wipe_directory(fd)
    finally:
        os.close(fd)


def wipe_directory(dir_fd):
    with os.scandir(dir_fd) as scan:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan]
    for name, is_dir in entries:
        sub = open_directory(name, dir_fd) if is_dir else None
        if sub is None:
            os.unlink(name, dir_fd=dir_fd)
            continue
        try:
            wipe_directory(sub)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dir_fd)


def open_directory(name, dir_fd):
    """The directory `name` of `dir_fd`, opened to be emptied (made ours
    first if user code locked it), or None if it is no directory (now)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except PermissionError:
            unlock_directory(name, dir_fd)
            return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            return None  # a link or a file swapped in: removed as such
        raise


def unlock_directory(name, dir_fd):
    """Mode 0700 for a directory user code locked, set through an O_PATH fd
    of it (so never through a link: chmod has no no-follow form here)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
    finally:
        os.close(fd)


class SysV:
    """One kind of SysV IPC object: how to make a private one, remove one by
    id, and count those that exist (Linux and gVisor alike: SHM_INFO's
    shm_tot in pages, SEM_INFO's semusz, MSG_INFO's msgpool)."""

    def __init__(self, table, create, remove, count):
        self.table, self.create, self.remove, self._count = table, create, remove, count

    def count(self):
        info = ctypes.create_string_buffer(128)
        if self._count(info) < 0:
            return None
        return self.unpack(info)

    def unpack(self, info):
        if self.table == "shm":
            return struct.unpack_from("ixxxxQ", info)[1]
        if self.table == "sem":
            return struct.unpack_from("10i", info)[7]
        return struct.unpack_from("i", info)[0]


SYSV_KINDS = (
    SysV(
        "shm",
        lambda: libc.shmget(IPC_PRIVATE, 1, 0o600),
        lambda ident: libc.shmctl(ident, IPC_RMID, None),
        lambda info: libc.shmctl(0, SHM_INFO, info),
    ),
    SysV(
        "sem",
        lambda: libc.semget(IPC_PRIVATE, 1, 0o600),
        lambda ident: libc.semctl(ident, 0, IPC_RMID),
        lambda info: libc.semctl(0, 0, SEM_INFO, info),
    ),
    SysV(
        "msg",
        lambda: libc.msgget(IPC_PRIVATE, 0o600),
        lambda ident: libc.msgctl(ident, IPC_RMID, None),
        lambda info: libc.msgctl(0, MSG_INFO, info),
    ),
)


def remove_sysv_ipc():
    """Removes every SysV IPC object (they outlive processes; the
    container's IPC namespace is private), listed in /proc/sysvipc or, where
    it is missing (gVisor), found by id; then counts what is left. None, or
    why not."""
    for kind in SYSV_KINDS:
        if kind.count() == 0:
            continue
        try:
            with open(f"/proc/sysvipc/{kind.table}") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 1:
                        kind.remove(int(fields[1]))
        except FileNotFoundError:
            remove_by_id(kind)
        except (OSError, ValueError):
            pass
        left = kind.count()
        if left != 0:
            return f"SysV IPC ({kind.table}) objects a run left could not all be removed ({left} left)"
    return None


def remove_by_id(kind):
    """Where ids come in sequence (gVisor), a new private object's id is
    above every object a run made: the ids below it are removed, at most
    SYSV_PROBE_IDS of them, until none is left."""
    top = kind.create()
    if top < 0:
        return
    kind.remove(top)
    for ident in range(top - 1, max(top - SYSV_PROBE_IDS, -1), -1):
        if kind.remove(ident) == 0 and kind.count() == 0:
            return


def sysv_unlistable():
    """Where /proc/sysvipc is missing (gVisor), whether the reset finds SysV
    objects by id all the same: one of each kind is made and must be gone
    after remove_sysv_ipc. None, or why not."""
    if os.path.isdir("/proc/sysvipc"):
        return None
    for kind in SYSV_KINDS:
        if kind.create() < 0:
            return f"/proc/sysvipc missing, and a SysV ({kind.table}) object could not be made to test the reset"
    failure = remove_sysv_ipc()
    return f"/proc/sysvipc missing, and {failure}" if failure else None


class Spares:
    """The container's warm spares: the zygote's (`data`) and, when there is
    a light zygote, its one (`light`). The reset forks again only the kind
    the last run used (the next run is likely to want it too); the other is
    forked once the container has been idle for SPARE_IDLE_S, or when a run
    needs it and there is none (then that run waits for the fork). So a
    stream of light runs never pays for the preload's fork, and a stream of
    data runs pays for nothing more than with one fork source."""

    def __init__(self, zygote, light_zygote):
        self.zygote = zygote
        self.light_zygote = light_zygote
        self.data = None
        self.light = None
        self.data_next = True
        # What new spares rehearse: the shape of the last request.
        self.rehearsal = rehearsal_for(None)

    def zygotes(self):
        return [zygote for zygote in (self.zygote, self.light_zygote) if zygote is not None]

    def fresh(self, kind, command=b"S", between=None, warm_timeout_s=SPARE_WARM_TIMEOUT_S):
        """A new warm spare of `kind` ("data" or "light"), rehearsed as the
        last request, or why there is none (the container is then recycled)."""
        zygote = self.zygote if kind == "data" else self.light_zygote
        try:
            spare = Spare(zygote, self.rehearsal, command, between)
        except ZygoteLost as lost:
            return None, str(lost)
        # Ready means warm: the next run must not pay for the warm-up.
        if not spare.wait_warm(warm_timeout_s):
            said = spare.last_words()
            spare.close()
            return None, "the new spare did not warm up" + (f": {said}" if said else "")
        return spare, None

    def fill(self):
        """The first spares, before any run; why not, or None."""
        self.data, failure = self.fresh("data")
        if not failure and self.light_zygote is not None:
            self.light, failure = self.fresh("light")
        return failure

    def refill(self, clean):
        """The reset's spare: the zygote kills everything else (and forks
        the data spare if the last run used one) while `clean()` runs; why
        the container cannot be reused, or None."""
        if self.data_next or self.light_zygote is None:
            self.data, failure = self.fresh("data", b"K", clean, RESET_WARM_TIMEOUT_S)
            return failure
        try:
            self.zygote.request(b"K")
        except ZygoteLost as lost:
            return str(lost)
        failure = clean()
        if failure:
            return failure
        self.light, failure = self.fresh("light")
        return failure

    def take(self, request):
        """The spare to serve `request`: a light one when the code surely
        needs nothing preloaded (the data one if that is the one there is,
        as with one fork source), else the data one; one is forked now if
        the wanted kind is missing (the other kind if that fork fails: the
        reset then tells). None only when no spare can be had at all.
        The spares forked from now on rehearse `request`'s shape."""
        self.rehearsal = rehearsal_for(request)
        if self.light_zygote is None:
            return self.data
        self.data_next = spares_runtime["needs_preload"](request)
        if not self.data_next and self.light is None and self.data is not None:
            return self.data
        for kind in ("data", "light") if self.data_next else ("light", "data"):
            if getattr(self, kind) is None:
                spare, failure = self.fresh(kind)
                if failure:
                    sys.stderr.write(f"mcp-code-exec agent: no {kind} spare: {failure}\n")
                    continue
                setattr(self, kind, spare)
            return getattr(self, kind)
        return None

    def when_idle(self):
        """Forks the spare the reset did not, once no request came within
        SPARE_IDLE_S (a failure is left to take() and the reset)."""
        missing = [kind for kind in ("data", "light") if getattr(self, kind) is None]
        if self.light_zygote is None or not missing or host.wait_readable(SPARE_IDLE_S):
            return
        for kind in missing:
            setattr(self, kind, self.fresh(kind)[0])

    def close(self):
        for spare in (self.data, self.light):
            if spare is not None:
                spare.close()
        self.data = self.light = None


# ---------------------------------------------------------------- main

oom_counter = OomCounter()
host = FrameReader()
# The `mcp` package of the sandbox (mcp_runtime.py) and its images
# (display.py), built once by main() and inherited by every run.
mcp_runtime = {"__name__": "mcp_runtime"}
display_runtime = {"__name__": "mcp_code_exec_display_runtime"}
# The agent's half of the run's streams (streams.py), also built by main().
streams_runtime = {"__name__": "mcp_code_exec_streams"}
# The run's packages (packages.py), also built by main().
packages_runtime = {"__name__": "mcp_code_exec_packages"}
# Which zygote's spare serves a run (spares.py), also built by main().
spares_runtime = {"__name__": "mcp_code_exec_spares"}
# Saved skills and their imports (skills.py), also built by main().
skills_runtime = {"__name__": "mcp_code_exec_skills"}


class Network:
    """The agent's egress: the proxy port's listener (bound by main(), kept for
    the agent's life) and the trust to install (PEM bytes, or b"")."""

    listener = None
    trust = b""


network = Network()


def set_network_environment(port, trust):
    """What every run sees (set before the zygote is forked, so all inherit
    it): the proxy, in both cases where tools read both, NO_PROXY empty (the
    sandbox's loopback holds nothing to reach around the proxy), and the
    trust when there is one."""
    proxy = f"http://127.0.0.1:{port}"
    for name in PROXY_VARIABLES:
        os.environ[name] = os.environ[name.lower()] = proxy
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = ""
    if trust:
        for name in TRUST_VARIABLES:
            os.environ[name] = TRUST


def main(argv):
    """argv: the sources of mcp_runtime.py, display.py, streams.py, packages.py,
    spares.py and skills.py, the comma-separated modules the zygote imports before any run
    (MCP_BRIDGE_PRELOAD), the zygotes' comma-separated flags ("light" for a
    light zygote beside it, "huge-pages" for MADV_COLLAPSE; or ""), the
    proxy port, then the sandbox's trust (PEM, in parts: one argument holds
    at most 128 KiB), if any."""
    if os.getpid() != 1:
        # kill(-1) outside a PID namespace would hit every process of this uid.
        sys.stderr.write("mcp-code-exec agent: refusing to run outside a container (not PID 1)\n")
        sys.exit(2)
    exec(compile(argv[0], "<mcp-runtime>", "exec"), mcp_runtime)
    exec(compile(argv[1], "<display>", "exec"), display_runtime)
    exec(compile(argv[2], "<streams>", "exec"), streams_runtime)
    exec(compile(argv[3], "<packages>", "exec"), packages_runtime)
    exec(compile(argv[4], "<spares>", "exec"), spares_runtime)
    exec(compile(argv[5], "<skills>", "exec"), skills_runtime)
    display_runtime["register_backend"]()  # before the preload imports matplotlib
    preload = [name for name in argv[6].split(",") if name]
    flags = argv[7].split(",")
    light = preload and "light" in flags
    huge_pages = "huge-pages" in flags
    port = int(argv[8])
    network.trust = "".join(argv[9:]).encode()
    set_network_environment(port, network.trust)
    packages_runtime["set_environment"](os.environ)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # inherited by the zygote
    # The root filesystem is read-only and /workspace is wiped: caches are noise.
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.chdir(WORKSPACE)
    baseline = integrity()
    gc.collect()
    # Here, not only in the zygotes: there each would write, and so copy,
    # its pages shared with the agent. With the pass in the zygotes alone
    # (and a set of the visited objects) an idle sandbox took 14 MiB more
    # without preload, 49 with it; with this one, none.
    immortalize_objects()
    gc.freeze()
    # Before the first request: the zygote's memory never holds run data.
    oom_before = oom_counter.read()
    try:
        # The light zygote first: the zygote spares it at reset.
        if light:
            reaped_r, reaped_w = os.pipe()
            os.set_blocking(reaped_r, False)
            os.set_blocking(reaped_w, False)
            light_zygote = Zygote([], huge_pages, reaped_pipe=reaped_w, other_end=reaped_r)
            os.close(reaped_w)
            zygote = Zygote(preload, huge_pages, (light_zygote.pid,), reaped_pipe=reaped_r)
            os.close(reaped_r)
        else:
            light_zygote = None
            zygote = Zygote(preload, huge_pages)
    except ZygoteLost as lost:
        reason = str(lost)
        if oom_counter.read() > oom_before:
            reason = (
                f"out of memory importing the preloaded modules ({', '.join(preload)}); "
                "raise MCP_BRIDGE_MEMORY or preload fewer (MCP_BRIDGE_PRELOAD)"
            )
        sys.stderr.write(f"mcp-code-exec agent: the zygote did not start: {reason}\n")
        os._exit(5)
    # Bound after the zygote is forked: no process but the agent holds it.
    network.listener = streams_runtime["listen"](port)
    # In every Y, so the host tells the agent's from one user code forged
    # (gVisor lets it write to the agent's stdout). Made after the zygote is
    # forked (no run is forked from a process that knows it) and sent only
    # when no process but the agent and the zygote lives.
    token = os.urandom(16).hex()
    sysv = sysv_unlistable()
    single_use = reset_impossible(zygote.queues, sysv)
    # What the preload wrote (e.g. matplotlib's font cache in $HOME) is not
    # the first run's to see.
    failure = fresh_places(sysv=sysv is None)
    spares = Spares(zygote, light_zygote)
    if not failure:
        failure = spares.fill()
    if failure:
        sys.stderr.write(f"mcp-code-exec agent: no first spare: {failure}\n")
        os._exit(5)
    hello = {"python": sys.version.split()[0], "preload_missing": zygote.missing, "token": token}
    if single_use:
        hello["single_use"] = single_use
    send_json(ord("Y"), hello)
    # The spare of the session in progress, or of the last run once the
    # container is spent (single use, or a session's end): the host sends
    # nothing else but a late call of that session.
    spare = None
    while True:
        if spare is None:
            spares.when_idle()
        frame = host.wait_frame()
        if frame is None:
            os._exit(0)
        kind, payload = frame
        if kind == ord("A") or kind in STREAM_KINDS:
            continue  # a late answer, or stream frame, of a run that has ended
        if kind != ord("R"):
            sys.stderr.write(f"mcp-code-exec agent: unknown frame kind {kind}\n")
            os._exit(3)
        request = json.loads(payload)
        failure = None
        if "host_files" in request:
            failure = receive_host_files(request["host_files"])
            if failure:
                failure = f"could not write the host files: {failure}"
        if spare is None:
            spare = spares.take(request)
            if spare is None:
                send_json(ord("F"), {"reason": "no spare could be forked"})
                os._exit(4)
            script_failure = write_script(request["code"])  # a session's later calls need it too
            failure = failure or script_failure
        elif not request.get("session"):
            # The host runs stateless code only on a spare that never ran.
            sys.stderr.write("mcp-code-exec agent: a stateless run sent to a session's interpreter\n")
            os._exit(3)
        if failure:
            request["setup_error"] = failure
            payload = json.dumps(request).encode()
        if run(spare, spares.zygotes(), payload, request):
            continue  # the session's next call goes to the same spare
        if single_use or request.get("session"):
            # The host recycles this container (a session's is never reset
            # for anyone else); another run would be refused above, or
            # answered session_gone.
            continue
        spare = None
        failure = reset(spares, baseline)
        if failure:
            # The host recycles this container; nothing here can be trusted now.
            send_json(ord("F"), {"reason": failure})
            os._exit(4)
        send_json(ord("Y"), {"token": token})


if __name__ == "__main__":
    main(sys.argv[1:])

"""The agent's pure parts: frame reading, output caps, the call relay, the
child's status, how a run ends. Its process work (fork tree, reset) is tested
through the real engine (tests/suites/fidelity.rs, isolation.rs, bad_input.rs)."""

import json
import os
import pathlib
import re
import struct
import subprocess
import sys

import pytest


def test_frames_arrive_whole_across_chunks(agent):
    r, w = os.pipe()
    reader = agent.FrameReader(r)
    payload = b'{"code": "print(1)"}'
    frame = agent.HEADER.pack(ord("R"), len(payload)) + payload
    os.write(w, frame[:3])
    reader.feed()
    assert reader.next_frame() is None
    os.write(w, frame[3:] + agent.HEADER.pack(ord("A"), 0))
    reader.feed()
    assert reader.next_frame() == (ord("R"), payload)
    assert reader.next_frame() == (ord("A"), b"")
    os.close(w)
    assert reader.wait_frame() is None, "end of input is the host gone"
    assert reader.closed
    os.close(r)


def test_parts_are_written_whole_and_in_order_across_short_writes(agent, monkeypatch):
    real = os.writev
    monkeypatch.setattr(agent.os, "writev", lambda fd, parts: real(fd, [bytes(parts[0][:3])]))
    r, w = os.pipe()
    agent.write_parts(w, [b"ab", b"", b"cdefg", memoryview(b"hijk")])
    os.close(w)
    assert os.read(r, 100) == b"abcdefghijk"
    os.close(r)


def test_output_keeps_the_head_and_counts_the_rest(agent, monkeypatch):
    sent = []
    monkeypatch.setattr(agent, "send", lambda kind, data: sent.append((kind, bytes(data))))
    output = agent.Output(ord("O"), 5)
    output.forward(b"abc")
    output.forward(b"defg")
    output.forward(b"h")
    assert sent == [(ord("O"), b"abc"), (ord("O"), b"de")]
    assert output.dropped == 3


def test_calls_are_lines_and_oversized_ones_are_refused(agent, monkeypatch):
    monkeypatch.setattr(agent, "MAX_CALL_BYTES", 16)
    lines = []
    relay = agent.CallRelay(-1, lines.append)
    relay.forward_calls(b'{"id":1}\n{"id"')
    relay.forward_calls(b":2}\n")
    assert lines == [b'{"id":1}', b'{"id":2}']
    # Over the bound: dropped as it comes (nothing kept), answered with its id.
    relay.forward_calls(b'{"id":7,"x":"' + b"x" * 20)
    assert not relay.partial
    relay.forward_calls(b"y" * 100)
    relay.forward_calls(b'"}\n{"id":3}\n' + b"z" * 17 + b"\n")
    assert lines == [b'{"id":1}', b'{"id":2}', b'{"id":3}'], "the run's calls go on"
    answers = [json.loads(line) for line in relay.pending.splitlines()]
    assert [a["id"] for a in answers] == [7, None], "the id when the line's head has one"
    assert not any(a["ok"] for a in answers)
    assert "over 0 MiB, the most a call may carry: refused" in answers[0]["error"]


def test_an_answer_cut_by_the_calls_end_is_carried_to_the_next_call(agent):
    r, w = os.pipe()
    os.set_blocking(w, False)
    relay = agent.CallRelay(w, None)
    assert relay.cut_answer() == b"", "nothing written yet"
    big = b'{"id":1,"x":"' + b"x" * (1 << 20) + b'"}'
    relay.queue_answer(big)
    relay.queue_answer(b'{"id":2}')
    relay.write_answers()  # as much as the pipe takes
    head = os.read(r, 1 << 21)
    assert 0 < len(head) < len(big)
    rest = relay.cut_answer()
    assert head + rest == big + b"\n", "the rest of the cut answer, not the next one"
    following = agent.CallRelay(w, None, cut=rest)
    following.queue_answer(b'{"id":3}')
    received = head
    while following.pending:
        following.write_answers()
        received += os.read(r, 1 << 21)
    assert received.split(b"\n") == [big, b'{"id":3}', b""]
    assert following.cut_answer() == b""
    os.close(r)
    os.close(w)


def test_leftovers_are_drained_to_the_last_byte(agent, tmp_path, monkeypatch):
    monkeypatch.setattr(agent, "IMAGE_DIR", str(tmp_path))
    fds = [os.pipe() for _ in range(4)]
    spare = agent.Spare.__new__(agent.Spare)
    spare.out_r, spare.err_r, spare.call_r, spare.status_r = (r for r, _ in fds)
    for r, w in fds:
        os.set_blocking(r, False)
        os.set_blocking(w, False)
    fcntl = pytest.importorskip("fcntl")
    fcntl.fcntl(fds[0][1], fcntl.F_SETPIPE_SZ, 1 << 20)  # as user code may make it
    for _, w in fds:
        try:
            while True:
                os.write(w, b"x" * 65536)
        except BlockingIOError:
            pass
    spare.discard_leftovers()
    for r, w in fds:
        assert agent.read_some(r) is None, "the pipe is empty"
        os.close(r)
        os.close(w)


def test_answers_are_written_as_the_child_reads_them(agent):
    r, w = os.pipe()
    os.set_blocking(w, False)
    relay = agent.CallRelay(w, None)
    relay.queue_answer(b'{"id":1}')
    relay.queue_answer(b'{"id":2}')
    relay.write_answers()
    assert not relay.pending
    assert os.read(r, 100) == b'{"id":1}\n{"id":2}\n'
    os.close(r)
    relay.queue_answer(b"late")
    relay.write_answers()  # the child stopped listening: dropped, not raised
    assert not relay.pending
    os.close(w)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"exit_code": 3, "error": "E: x", "error_type": "E"}', {"exit_code": 3, "error": "E: x", "error_type": "E"}),
        (b'{"exit_code": true}', {}),
        (b'{"exit_code": 256}', {}),
        (b'{"exit_code": -1, "error": 5, "other": "x"}', {}),
        (b"[1, 2]", {}),
        (b'{"exit_code": 0', {}),
        (b"", {}),
        (b"[" * 16000, {}),
    ],
)
def test_the_childs_status_is_untrusted(agent, raw, expected):
    assert agent.parse_status(raw) == expected


def test_system_exit_codes_mirror_the_interpreter(agent, capsys):
    assert agent.system_exit_code(SystemExit()) == 0
    assert agent.system_exit_code(SystemExit(3)) == 3
    assert agent.system_exit_code(SystemExit(256 + 7)) == 7
    assert agent.system_exit_code(SystemExit("bye")) == 1
    assert capsys.readouterr().err == "bye\n"


def test_execute_reports_exit_codes_and_errors(agent, capsys):
    env = {"__name__": "__main__"}
    assert agent.execute("import asyncio\nawait asyncio.sleep(0)\nx = 1", env, "<t>") == (0, {})
    assert env["x"] == 1
    assert agent.execute("raise SystemExit(4)", {}, "<t>") == (4, {})
    code, status = agent.execute("def f():\n    raise ValueError('boom')\nf()", {}, "<t>")
    assert (code, status) == (1, {"error": "ValueError: boom", "error_type": "ValueError"})
    err = capsys.readouterr().err
    assert err.startswith('Traceback (most recent call last):\n  File "<t>", line 3, in <module>\n')
    assert "agent.py" not in err, "the agent's own frames are hidden"


def test_a_users_excepthook_gets_the_exception(agent, monkeypatch):
    seen = []

    def hook(kind, value, tb):
        seen.append((kind, str(value), tb.tb_frame.f_code.co_filename))

    monkeypatch.setattr(sys, "excepthook", hook)
    assert agent.execute("raise KeyError('k')", {}, "<t>")[0] == 1
    assert seen == [(KeyError, "'k'", "<t>")]


def test_a_run_ends_like_the_interpreter(agent):
    # In a process of its own: atexit handlers are process-wide.
    script = (
        f"import atexit, sys, threading, time\nsys.path.insert(0, {str(pathlib.Path(agent.__file__).parent)!r})\n"
        "import agent\n"
        "atexit.register(print, 'atexit')\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()\n"
        "print('main')\n"
        "code = agent.interpreter_exit(0)\n"
        "print('exit', code, flush=True)\n"
        "agent.os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout == "main\nthread\natexit\nexit 0\n"


@pytest.mark.parametrize(
    ("last", "installs"),
    [
        (None, ["mcp", "skills"]),  # before any request: every install
        ({"code": "1", "skills": True}, ["skills"]),
        ({"code": "1", "servers": [{"name": "s"}]}, ["mcp"]),
        ({"code": "1", "servers": [], "discovered": [{"name": "s"}]}, ["mcp"]),  # servers configured, none allowed
        ({"code": "1"}, []),
    ],
)
def test_the_rehearsal_goes_through_a_run_shaped_as_the_last_and_leaves_nothing_behind(agent, last, installs):
    # In a process of its own: it rewires sys.stdout, sys.path and sys.modules.
    # A preloaded thread pool (sklearn's) registers with threading: the
    # rehearsal must not shut threading down for the run.
    sandbox = pathlib.Path(agent.__file__).parent
    script = (
        f"import builtins, concurrent.futures, io, json, os, sys, threading\nsys.path.insert(0, {str(sandbox)!r})\n"
        "import agent\n"
        "for ns, name in ((agent.mcp_runtime, 'mcp_runtime'), (agent.display_runtime, 'display'),\n"
        "                 (agent.skills_runtime, 'skills'), (agent.packages_runtime, 'packages')):\n"
        f"    exec(compile(open(f'{sandbox}/{{name}}.py').read(), name, 'exec'), ns)\n"
        "threading._register_atexit(lambda: None)\n"
        "statuses, installs = [], []\n"
        "write_status = agent.write_status\n"
        "agent.write_status = lambda fd, status: (statuses.append((fd, dict(status))), write_status(fd, status))\n"
        "for name, runtime in (('mcp', agent.mcp_runtime), ('skills', agent.skills_runtime)):\n"
        "    install = runtime['install']\n"
        "    runtime['install'] = lambda *a, _i=install, _n=name: (installs.append(_n), _i(*a))\n"
        "modules, finders, names = set(sys.modules), list(sys.meta_path), set(vars(builtins))\n"
        "stdout, stderr = sys.stdout, sys.stderr\n"
        "code_r, code_w = os.pipe()\n"
        f"rehearsal = agent.rehearsal_for({last!r})\n"
        "agent.write_parts(code_w, (agent.LENGTH.pack(len(rehearsal)), rehearsal))\n"
        "calls, answers = os.pipe()\n"
        "agent.rehearse(agent.read_message(code_r), agent.mcp_runtime['connect'](answers, calls, 1 << 20))\n"
        "seen = {\n"
        "    'statuses': statuses,\n"
        "    'installs': installs,\n"
        "    'modules': sorted(set(sys.modules) ^ modules),\n"
        "    'finders': sys.meta_path == finders,\n"
        "    'builtins': sorted(set(vars(builtins)) ^ names),\n"
        "    'streams': sys.stdout is stdout and sys.stderr is stderr,\n"
        "}\n"
        "with concurrent.futures.ThreadPoolExecutor() as pool:\n"
        "    seen['threads'] = [threading._SHUTTING_DOWN, pool.submit(lambda: 'pooled').result()]\n"
        "print(json.dumps(seen))\n"
    )
    with open(os.devnull, "r+b") as devnull:  # fd 0 of a spare: /dev/null, read-write
        out = subprocess.run(
            [sys.executable, "-c", script], stdin=devnull, capture_output=True, text=True, check=True, timeout=30
        )
    assert out.stdout.count("\n") == 1 and not out.stderr, out  # the rehearsal printed nothing of its own
    seen = json.loads(out.stdout)
    # It went the whole way, its status to /dev/null.
    assert seen["statuses"] == [[0, {"images_dropped": 0, "image_notes": [], "exit_code": 0}]]
    assert seen["installs"] == installs
    assert seen["modules"] == [] and seen["finders"] and seen["builtins"] == [] and seen["streams"]
    assert seen["threads"] == [False, "pooled"]


def test_a_rehearsal_is_encoded_once_per_shape(agent):
    assert agent.rehearsal_for({"code": "a", "skills": True}) is agent.rehearsal_for({"code": "b", "skills": True})
    assert agent.rehearsal_for({"code": "a"}) != agent.rehearsal_for({"code": "a", "skills": True})


def test_the_newest_keys_are_read_from_the_end(agent):
    mapping = dict.fromkeys("abc")
    count = len(mapping)
    mapping["d"] = mapping["e"] = None
    mapping["a"] = 1  # a value replaced keeps its place
    assert agent.newest(mapping, count) == ["e", "d"]
    assert agent.newest(mapping, len(mapping) + 1) == []
    del mapping["b"]
    mapping["b"] = 2  # a key moved to the end is taken for an added one: rehearse() checks its ends
    assert agent.newest(mapping, count) == ["b", "e"]


def test_a_rehearsal_that_moves_a_module_it_did_not_add_fails(agent, monkeypatch):
    monkeypatch.setattr(agent, "serve", lambda *args: sys.modules.__setitem__("json", sys.modules.pop("json")))
    monkeypatch.setattr(agent, "like_a_script", lambda: None)
    monkeypatch.setattr(agent, "fresh_main_module", lambda: None)
    with pytest.raises(RuntimeError, match="moved a module"):
        agent.rehearse({}, None)
    assert "json" in sys.modules


def test_a_spare_that_did_not_warm_up_tells_its_last_line(agent):
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    spare = type("Spare", (), {"err_r": read_end})()
    try:
        assert agent.Spare.last_words(spare) == ""  # nothing written: no wait either
        os.write(write_end, b"Traceback (most recent call last):\n  ...\nKeyError: 'servers' " + b"x" * 500 + b"\n")
        said = agent.Spare.last_words(spare)
        assert said.startswith("KeyError: 'servers' x") and len(said) == agent.LAST_WORDS_LIMIT
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_script_is_made_anew_through_a_planted_link_and_a_failure_is_told(agent, tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    target.write_text("kept")
    monkeypatch.setattr(agent, "SCRIPT_DIR", str(tmp_path))
    (tmp_path / agent.SCRIPT_NAME).symlink_to(target)
    assert agent.write_script("print('run')") is None
    script = tmp_path / agent.SCRIPT_NAME
    assert not script.is_symlink() and script.read_text() == "print('run')"
    assert target.read_text() == "kept"
    monkeypatch.setattr(agent, "SCRIPT_DIR", str(tmp_path / "gone"))
    assert agent.write_script("x").startswith(f"could not write {agent.SCRIPT}: ")


def test_preload_reports_what_is_missing(agent):
    missing = agent.preload_modules(["json", "no_such_module_for_this_test"])
    assert len(missing) == 1
    assert missing[0].startswith("no_such_module_for_this_test (ModuleNotFoundError")


def test_wipe_empties_directories_the_user_locked(agent, tmp_path):
    locked = tmp_path / "a" / "b"
    locked.mkdir(parents=True)
    (locked / "f").write_text("x")
    (tmp_path / "link").symlink_to("/etc")
    (tmp_path / "a").chmod(0)
    agent.wipe_children(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    assert os.path.exists("/etc/passwd"), "symlinks are removed, not followed"


def test_the_wipe_never_follows_a_link_swapped_in_for_a_directory(agent, tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    victim.chmod(0o500)
    real = os.scandir
    swapped = []

    class Listing(list):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def scandir(where):
        with real(where) as scan:
            entries = Listing(scan)
        if not swapped:  # after the listing of root, before the walk into "a"
            swapped.append(True)
            (root / "a").rmdir()
            (root / "a").symlink_to(victim)
        return entries

    monkeypatch.setattr(agent.os, "scandir", scandir)
    agent.wipe_children(str(root))
    assert list(root.iterdir()) == [], "the link is removed"
    assert (victim / "keep").exists(), "not emptied through the link"
    assert victim.stat().st_mode & 0o777 == 0o500, "nor unlocked through it"
    victim.chmod(0o700)


def test_shared_writable_mappings_are_found(agent, tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "55d0-55d1 r-xp 00000000 08:01 42 /usr/bin/python3\n"
        "7f00-7f01 rw-p 00000000 00:00 0 \n"
        "7f10-7f11 rw-s 00000000 00:05 7 /SYSV00000000 (deleted)\n"
        "7f20-7f21 r--s 00000000 08:01 9 /usr/share/x.cache\n"
        "7f30-7f31 rw-s 00000000 00:01 3\n"
    )
    assert agent.shared_writable_mappings(str(maps)) == ["/SYSV00000000 (deleted)", "[anonymous]"]
    script = (
        f"import mmap, sys\nsys.path.insert(0, {str(pathlib.Path(agent.__file__).parent)!r})\n"
        "import agent\nbefore = agent.shared_writable_mappings()\nshared = mmap.mmap(-1, 4096)\n"
        "print(before, len(agent.shared_writable_mappings()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout == "[] 1\n", "a plain interpreter has none; an anonymous shared mmap is one"


def test_huge_page_ranges_are_whole_2mib_pages_of_private_writable_anonymous_memory(agent, tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "55d000000000-55d000600000 r-xp 00000000 08:01 42 /usr/bin/python3\n"
        "55d000600000-55d001a00000 rw-p 00000000 00:00 0 [heap]\n"
        "7f0000100000-7f0000700000 rw-p 00000000 00:00 0 \n"
        "7f0000800000-7f0000a00000 rw-s 00000000 00:01 3\n"
        "7f0000a00000-7f0000c00000 rw-p 00000000 08:01 9 /usr/lib/libz.so\n"
        "7f0000c00000-7f0000e00000 r--p 00000000 00:00 0 \n"
        "7f0000e00000-7f0000f00000 rw-p 00000000 00:00 0 \n"
        "7ffc00000000-7ffc00400000 rw-p 00000000 00:00 0 [stack]\n"
    )
    assert agent.huge_page_ranges(str(maps)) == [
        (0x55D000600000, 0x1400000),  # the heap, 2 MiB-aligned at both ends already
        (0x7F0000200000, 0x400000),  # an arena, rounded in to whole huge pages
    ], "not shared, file-backed, read-only, under 2 MiB, or the stack"


def test_huge_page_ranges_leave_out_what_the_process_had_before(agent, tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "55d000600000-55d001a00000 rw-p 00000000 00:00 0 [heap]\n7f0000000000-7f0000800000 rw-p 00000000 00:00 0 \n"
    )
    before = [(0x55D000600000, 0x55D000900000), (0x7F0000400000, 0x7F0000400001)]
    assert agent.huge_page_ranges(str(maps), before) == [
        (0x55D000A00000, 0x1000000),  # the heap past the pages the old one touches
        (0x7F0000000000, 0x400000),  # an arena but for the page with a byte of the old
        (0x7F0000600000, 0x200000),
    ], "a huge page that touches old memory is not collapsed: the agent shares it"


def test_collapse_into_huge_pages_is_best_effort_and_keeps_memory_intact(agent):
    script = (
        f"import sys\nsys.path.insert(0, {str(pathlib.Path(agent.__file__).parent)!r})\n"
        "import agent\ndata = bytearray(range(256)) * (64 * 1024)\nbefore = hash(bytes(data))\n"
        "collapsed = agent.collapse_into_huge_pages()\n"
        "print(collapsed // agent.HUGE_PAGE, collapsed % agent.HUGE_PAGE, hash(bytes(data)) == before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30)
    pages, rest, intact = out.stdout.split()
    assert (rest, intact) == ("0", "True"), out.stderr
    release = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
    if release >= (6, 1) and os.path.isdir("/sys/kernel/mm/transparent_hugepage"):
        assert int(pages) >= 6, "16 MiB of fresh data spans at least six whole huge pages"


def test_integrity_is_stable_and_sees_a_nice_change(agent):
    before = agent.integrity()
    assert agent.integrity() == before
    script = (
        f"import os, sys\nsys.path.insert(0, {str(pathlib.Path(agent.__file__).parent)!r})\n"
        "import agent\nbefore = agent.integrity()\nos.nice(1)\nprint(agent.integrity() != before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout == "True\n"


def test_output_files_are_bounded_and_never_follow_links(agent, tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("alpha")
    (out / "sub" / "b.bin").write_bytes(b"\x00\x01")
    (out / "big.bin").write_bytes(b"x" * 100)
    (out / "secret").symlink_to("/etc/passwd")
    (out / "subdir-link").symlink_to(tmp_path)
    os.mkfifo(out / "fifo")
    monkeypatch.setattr(agent, "OUT_DIR", str(out))
    sent = []
    monkeypatch.setattr(agent, "send", lambda kind, data: sent.append((kind, bytes(data))))
    dropped = agent.send_output_files({"max_files": 10, "max_bytes": 50}, agent.OutFiles())
    files = {}
    for kind, payload in sent:
        assert kind == ord("P")
        length = int.from_bytes(payload[:2], "big")
        files[payload[2 : 2 + length].decode()] = payload[2 + length :]
    assert files == {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01"}
    assert dropped == {"files_dropped": 1, "files_dropped_bytes": 100}


def test_output_file_count_is_bounded(agent, tmp_path, monkeypatch):
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text("x")
    monkeypatch.setattr(agent, "OUT_DIR", str(tmp_path))
    sent = []
    monkeypatch.setattr(agent, "send", lambda kind, data: sent.append(kind))
    assert agent.send_output_files({"max_files": 3, "max_bytes": 1 << 20}, agent.OutFiles())["files_dropped"] == 2
    assert len(sent) == 3


def png(width, height, padding=0):
    header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return header + b"\x00" * (8 + padding)


def test_images_are_checked_again_by_the_agent(agent, tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    (images / "0000.png").write_bytes(png(10, 10))
    (images / "0001.png").write_bytes(b"not a png")
    (images / "0002.png").write_bytes(png(10, 10, padding=100))  # over max_bytes
    (images / "0003.png").write_bytes(png(5000, 10))  # over max_pixels
    (images / "0004.png").symlink_to(images / "0000.png")
    (images / "0005.png").write_bytes(png(20, 20))
    monkeypatch.setattr(agent, "IMAGE_DIR", str(images))
    sent = []
    monkeypatch.setattr(agent, "send", lambda kind, data: sent.append((kind, data)))
    bounds = {"max_bytes": 64, "max_images": 8, "max_pixels": 100}
    reported = agent.send_images(bounds, {"images_dropped": 2, "image_notes": ["n"]})
    assert sent == [(ord("I"), png(10, 10)), (ord("I"), png(20, 20))]
    assert reported == {
        "images_dropped": 2,
        "image_notes": ["n", "3 image files were not PNGs within the bounds: dropped"],
    }


def test_a_linked_image_directory_is_not_followed(agent, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "0000.png").write_bytes(png(10, 10))
    (tmp_path / "images").symlink_to(elsewhere)
    monkeypatch.setattr(agent, "IMAGE_DIR", str(tmp_path / "images"))
    sent = []
    monkeypatch.setattr(agent, "send", lambda kind, data: sent.append(kind))
    agent.send_images({"max_bytes": 64, "max_images": 8, "max_pixels": 100}, {})
    assert sent == []


def test_names_the_host_cannot_take_are_left_behind(agent, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ok.txt").write_text("x")
    os.close(os.open(os.path.join(os.fsencode(out), b"bad-\xff.txt"), os.O_CREAT | os.O_WRONLY))
    monkeypatch.setattr(agent, "OUT_DIR", str(out))
    monkeypatch.setattr(agent, "MAX_PATH_BYTES", 8)
    (out / "a-long-name.txt").write_text("y")
    sent = []
    monkeypatch.setattr(agent, "send", lambda kind, data: sent.append(bytes(data)))
    dropped = agent.send_output_files({"max_files": 10, "max_bytes": 100}, agent.OutFiles())
    assert sent == [b"\x00\x06ok.txtx"]
    assert dropped == {"files_dropped": 2, "files_dropped_bytes": 1}


def test_a_big_call_is_one_line_however_it_is_split(agent):
    lines = []
    relay = agent.CallRelay(-1, lines.append)
    big = b"x" * (1 << 20)
    for start in range(0, len(big), 65536):
        relay.forward_calls(big[start : start + 65536])
    relay.forward_calls(b"\n{")
    assert lines == [big] and relay.partial == b"{"


def test_input_files_land_in_the_workspace_only(agent, tmp_path, monkeypatch):
    monkeypatch.setattr(agent, "WORKSPACE", str(tmp_path))
    agent.write_input_files([{"path": "data/in.csv", "text": "a,b\n"}, {"path": "x.bin", "base64": "AAE="}])
    assert (tmp_path / "data" / "in.csv").read_text() == "a,b\n"
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="escapes"):
        agent.write_input_files([{"path": "../escape", "text": "x"}])


def test_the_walk_of_out_is_bounded_in_entries_and_depth(agent, tmp_path, monkeypatch):
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text("x")
    deep = tmp_path / "d1" / "d2"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("y")
    monkeypatch.setattr(agent, "OUT_DIR", str(tmp_path))
    sent = []
    monkeypatch.setattr(agent, "send", lambda kind, data: sent.append(bytes(data)))
    monkeypatch.setattr(agent, "OUT_MAX_DEPTH", 1)
    agent.send_output_files({"max_files": 100, "max_bytes": 1 << 20}, agent.OutFiles())
    assert len(sent) == 5, "d1/d2/deep.txt is deeper than the walk goes"
    sent.clear()
    (deep / "deep.txt").unlink()
    deep.rmdir()
    (tmp_path / "d1").rmdir()
    monkeypatch.setattr(agent, "OUT_MAX_ENTRIES", 3)
    agent.send_output_files({"max_files": 100, "max_bytes": 1 << 20}, agent.OutFiles())
    assert len(sent) == 3, "at most 3 directory entries are looked at"


def test_a_session_returns_only_the_files_its_call_wrote(agent, tmp_path, monkeypatch):
    monkeypatch.setattr(agent, "OUT_DIR", str(tmp_path))
    monkeypatch.setattr(agent.OutFiles, "COARSE_CLOCK_NS", 0)  # see the next test
    sent = []
    monkeypatch.setattr(agent, "send", lambda kind, data: sent.append(bytes(data)))
    bounds = {"max_files": 100, "max_bytes": 1 << 20}
    before = agent.OutFiles()
    (tmp_path / "a.txt").write_text("1")
    (tmp_path / "big.bin").write_bytes(b"x" * 200)
    dropped = agent.send_output_files({"max_files": 100, "max_bytes": 100}, before)
    assert sent == [b"\x00\x05a.txt1"] and dropped["files_dropped"] == 1
    sent.clear()
    (tmp_path / "b.txt").write_text("2")
    agent.send_output_files(bounds, before)
    assert sent == [b"\x00\x05b.txt2"], "a.txt and big.bin did not change"
    sent.clear()
    (tmp_path / "a.txt").write_text("3")  # rewritten, same size
    agent.send_output_files(bounds, before)
    assert sent == [b"\x00\x05a.txt3"]
    sent.clear()
    (tmp_path / "b.txt").unlink()
    (tmp_path / "b.txt").write_text("2")  # a new file of the same name and content
    agent.send_output_files(bounds, before)
    assert sent == [b"\x00\x05b.txt2"]
    assert set(before.signatures) == {"a.txt", "b.txt", "big.bin"}, "only what the last walk saw"


def test_a_file_changed_within_a_clock_tick_of_the_last_walk_is_sent_again(agent, tmp_path, monkeypatch):
    monkeypatch.setattr(agent, "OUT_DIR", str(tmp_path))
    sent = []
    monkeypatch.setattr(agent, "send", lambda kind, data: sent.append(bytes(data)))
    bounds = {"max_files": 100, "max_bytes": 1 << 20}
    before = agent.OutFiles()
    (tmp_path / "a.txt").write_text("1")
    agent.send_output_files(bounds, before)
    agent.send_output_files(bounds, before)
    assert sent == [b"\x00\x05a.txt1"] * 2, "written 20 ms or less before the walk: its time stamps prove nothing"
    sent.clear()
    before.walked_ns += agent.OutFiles.COARSE_CLOCK_NS + 1  # as if walked a tick later
    agent.send_output_files(bounds, before)
    assert sent == [], "unchanged and older than a tick: not sent again"


def test_spare_messages_are_length_prefixed(agent):
    r, w = os.pipe()
    agent.write_status(w, {"exit_code": 3, "error": "E"})
    agent.write_status(w, {"exit_code": 0, "error": "é" * 8000})  # over the limit: cut
    os.close(w)
    assert agent.read_message(r) == {"exit_code": 3, "error": "E"}
    cut = agent.read_message(r)
    assert cut["exit_code"] == 0 and cut["error"] == "é" * 500
    assert agent.read_message(r) is None, "the end of the pipe between messages"
    os.close(r)
    r, w = os.pipe()
    os.write(w, agent.LENGTH.pack(10) + b"{}")
    os.close(w)
    with pytest.raises(EOFError):
        agent.read_message(r)
    os.close(r)


def test_the_status_is_the_first_whole_message_with_an_exit_code(agent):
    def message(obj):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return agent.LENGTH.pack(len(data)) + data

    reader = agent.StatusReader()
    stream = message(b"junk") + message({"error": "forged, no exit code"}) + message({"exit_code": 2, "error": "E"})
    for i in range(len(stream) - 1):
        assert reader.feed(stream[i : i + 1]) is None
    assert reader.feed(stream[-1:]) == {"exit_code": 2, "error": "E"}
    assert reader.feed(message({"exit_code": 0})) == {"exit_code": 2, "error": "E"}, "the first one stands"
    huge = agent.StatusReader()
    assert huge.feed(agent.LENGTH.pack(agent.STATUS_LIMIT + 1) + b"x") is None
    assert huge.feed(message({"exit_code": 0})) is None, "after an oversized header nothing is trusted"


def test_a_container_serves_one_run_when_a_reset_check_fails(agent):
    assert agent.reset_impossible(None, None) is None
    queues = "/dev/mqueue missing, and POSIX message queues cannot be refused: Invalid argument"
    sysv = "/proc/sysvipc missing, and SysV IPC (msg) objects a run left could not all be removed (1 left)"
    assert agent.reset_impossible(queues, None) == queues
    assert agent.reset_impossible(None, sysv) == sysv
    assert agent.reset_impossible(queues, sysv) == f"{queues}; {sysv}"


def test_sysv_objects_are_counted_the_way_linux_and_gvisor_agree(agent):
    """SHM_INFO's shm_tot (pages, after an int and padding), SEM_INFO's
    semusz (the eighth int), MSG_INFO's msgpool (the first)."""
    shm, sem, msg = agent.SYSV_KINDS
    info = struct.pack("ixxxxQ", 7, 3) + bytes(100)
    assert shm.unpack(info) == 3
    assert sem.unpack(struct.pack("10i", 1, 2, 3, 4, 5, 6, 7, 9, 10, 11)) == 9
    assert msg.unpack(struct.pack("8i", 4, 0, 0, 0, 0, 0, 0, 0)) == 4
    assert [kind.count() for kind in agent.SYSV_KINDS] == [shm.count(), sem.count(), msg.count()]


def test_a_setup_failure_is_the_runs_file_error_and_runs_no_code(agent, capsys):
    request = {"code": "raise SystemExit('ran')", "setup_error": "could not write /run/code/main.py: disk full"}
    exit_code, status, display = agent.run_code(request, None, agent.SCRIPT, None)
    assert (exit_code, display) == (1, None)
    assert status == {"error": request["setup_error"], "error_type": "FileError"}
    assert capsys.readouterr().err == request["setup_error"] + "\n"

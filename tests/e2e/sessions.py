"""Sessions end to end with the official MCP Python SDK: state kept across
calls and seen nowhere else, the limit on live sessions, idle expiry, a
timeout that ends a session, concurrent calls to one session, the metrics.

Usage: python sessions.py PATH_TO_MCP_CODE_EXEC
Spawns the server over stdio with at most 2 sessions and a 2 s idle TTL,
prints one line per passed check, exits non-zero on the first failure.
"""

import asyncio
import os
import socket
import sys
import tempfile
import time
import urllib.request

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

IDLE_TTL_SECONDS = 2


def check(condition, what, detail=None):
    if not condition:
        raise AssertionError(f"{what}: {detail!r}")
    print(f"ok  {what}", flush=True)


async def run(client, code, **extra):
    result = await client.call_tool("run_python", {"code": code, **extra})
    return result.structuredContent, result.content[0].text


def metric(port, line_start):
    """The value of the first /metrics line that starts with `line_start`."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starts with {line_start!r}")


async def state_is_kept_and_private(client, port):
    setup = "import statistics\ndata = [3, 1, 2]\nopen('seen.txt', 'w').write('x')"
    first, _ = await run(client, setup, session="eda")
    check(first["session"] == {"name": "eda", "state": "new"}, "the first call starts the session", first)
    second, text = await run(client, "data.append(10)\nprint(len(data))", session="eda")
    check(second["stdout"] == "4\n" and second["session"]["state"] == "continued", "globals persist", second)
    check(text.endswith("session eda: continued"), "the text says so too", text)
    third, _ = await run(client, "print(statistics.median(data), open('seen.txt').read())", session="eda")
    check(third["stdout"] == "2.5 x\n", "imports and /workspace persist over three calls", third)
    probe = "import os\nprint('data' in globals(), os.path.exists('seen.txt'))"
    stateless, _ = await run(client, probe)
    check(
        stateless["stdout"] == "False False\n" and "session" not in stateless,
        "a stateless call sees none of it",
        stateless,
    )
    other, _ = await run(client, probe, session="other")
    check(other["stdout"] == "False False\n" and other["session"]["state"] == "new", "nor does another session", other)
    check(metric(port, "mcp_code_exec_sessions ") == 2, "the live-sessions gauge counts them")


async def the_limit_names_itself(client):
    third, _ = await run(client, "print(1)", session="third")
    error = third.get("error", "")
    check(third["status"] == "error" and "session limit reached" in error, "a third session is refused", third)
    check("MCP_BRIDGE_MAX_SESSIONS=2" in error, "the error names the limit", error)
    check("eda (idle " in error and "other (idle " in error, "and the live sessions' idle times", error)
    ended, text = await run(client, "", session="other", end_session=True)
    check(ended["session"].get("ended") == "ended as asked (end_session)", "end_session with no code ends it", ended)
    third, _ = await run(client, "print(1)", session="third")
    check(third["status"] == "success" and third["session"]["state"] == "new", "which frees its place", third)
    await run(client, "", session="third", end_session=True)


async def concurrent_calls_are_serialised(client):
    await run(client, "import time\nspans = []", session="eda")
    step = "s = time.monotonic()\ntime.sleep(0.5)\nspans.append(({}, s, time.monotonic()))"

    async def sent_after(delay, i):
        await asyncio.sleep(delay)  # the order of arrival: requests sent at once have none
        return await run(client, step.format(i), session="eda")

    results = await asyncio.gather(sent_after(0, 0), sent_after(0.1, 1))
    check(all(r["status"] == "success" for r, _ in results), "two concurrent calls on one session both run", results)
    spans, _ = await run(client, "print([s[0] for s in spans], spans[0][2] <= spans[1][1])", session="eda")
    check(spans["stdout"] == "[0, 1] True\n", "one after the other, in the order sent, never overlapping", spans)


async def a_timeout_ends_the_session(client, port):
    timeouts_before = metric(port, 'mcp_code_exec_sessions_ended_total{reason="timeout"}')
    slow, _ = await run(client, "import time\ntime.sleep(30)", session="eda", timeout=1)
    check(slow["status"] == "timeout", "a call in a session can time out", slow)
    check("timed out" in slow["session"].get("ended", ""), "and the result says the session ended", slow)
    after, text = await run(client, "print('data' in globals())", session="eda")
    check(after["stdout"] == "False\n", "the next call starts clean", after)
    check(after["session"]["state"] == "lost" and "timed out" in after["session"]["lost"], "and says why", after)
    check("session eda: lost (a call timed out" in text, "in the text as well", text)
    ended = metric(port, 'mcp_code_exec_sessions_ended_total{reason="timeout"}')
    check(ended == timeouts_before + 1, "counted as ended by timeout", ended)


async def idle_sessions_expire(client, port):
    idle_before = metric(port, 'mcp_code_exec_sessions_ended_total{reason="idle"}')
    await run(client, "y = 1", session="idle")
    time.sleep(IDLE_TTL_SECONDS + 1.5)  # the sweeper looks every TTL/4
    check(metric(port, "mcp_code_exec_sessions ") == 0, "idle sessions end on their own")
    ended = metric(port, 'mcp_code_exec_sessions_ended_total{reason="idle"}')
    check(ended == idle_before + 2, "counted as ended when idle (eda, from the last check, and idle)", ended)
    after, _ = await run(client, "print('y' in globals())", session="idle")
    check(after["stdout"] == "False\n" and after["session"]["state"] == "lost", "the next call says it was lost", after)
    check(f"idle for {IDLE_TTL_SECONDS}s" in after["session"]["lost"], "because it was idle", after)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(binary):
    env = dict(os.environ)
    home = tempfile.mkdtemp()
    port = free_port()
    env.update(
        HOME=home,
        MCP_BRIDGE_POOL_MAX="4",
        MCP_BRIDGE_POOL_MIN_IDLE="1",
        MCP_BRIDGE_MAX_SESSIONS="2",
        MCP_BRIDGE_SESSION_IDLE_TTL=f"{IDLE_TTL_SECONDS}s",
        MCP_BRIDGE_METRICS_ADDR=f"127.0.0.1:{port}",
        MCP_BRIDGE_LOG_LEVEL="warn",
    )
    params = StdioServerParameters(command=binary, args=["serve"], env=env, cwd=home)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        await state_is_kept_and_private(client, port)
        await the_limit_names_itself(client)
        await concurrent_calls_are_serialised(client)
        await a_timeout_ends_the_session(client, port)
        await idle_sessions_expire(client, port)
    print("all session checks passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

"""End-to-end check of the built server with the official MCP Python SDK.

Usage: python mcp_client.py PATH_TO_MCP_CODE_EXEC
Spawns the server over stdio as an MCP client would, runs the scenarios,
prints one line per passed check, exits non-zero on the first failure.
"""

import asyncio
import json
import os
import sys
import tempfile

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CancelledNotification, CancelledNotificationParams, ClientNotification


def check(condition, what, detail=None):
    if not condition:
        raise AssertionError(f"{what}: {detail!r}")
    print(f"ok  {what}", flush=True)


async def call(session, code, **extra):
    return await session.call_tool("run_python", {"code": code, **extra})


def servers_config(directory):
    """Real servers (installed by scripts/test.sh) and the fixture, as a user would configure them."""
    here = os.path.dirname(os.path.abspath(__file__))
    python = sys.executable
    config = {
        "mcpServers": {
            "time": {
                "command": os.path.join(os.path.dirname(python), "mcp-server-time"),
                "args": ["--local-timezone", "UTC"],
            },
            "everything": {"command": os.environ["MCP_CODE_EXEC_TEST_EVERYTHING"], "args": ["stdio"]},
            "fixture": {
                "command": python,
                "args": [os.path.join(here, "fixture_server.py")],
                "description": "test fixture",
            },
        }
    }
    path = os.path.join(directory, "servers.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


async def main(binary):
    env = dict(os.environ)
    env.update(
        MCP_BRIDGE_POOL_MAX="1",
        MCP_BRIDGE_POOL_MIN_IDLE="1",
        MCP_BRIDGE_POOL_WAIT_TIMEOUT="20s",
        MCP_BRIDGE_LOG_LEVEL="info",
        MCP_SERVERS_CONFIG=servers_config(tempfile.mkdtemp()),
    )
    # An empty HOME and working directory: no MCP server file of this machine leaks in.
    home = tempfile.mkdtemp()
    env["HOME"] = home
    params = StdioServerParameters(command=binary, args=["serve"], env=env, cwd=home)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        check(init.serverInfo.name == "mcp-code-exec", "initialize names the server", init.serverInfo)

        tools = (await session.list_tools()).tools
        check([t.name for t in tools] == ["run_python"], "exactly one tool: run_python", tools)
        tool = tools[0]
        check(
            set(tool.inputSchema["properties"])
            == {"code", "servers", "timeout", "files", "session", "end_session", "packages"},
            "input schema",
            tool.inputSchema,
        )
        check(tool.inputSchema.get("required") == ["code"], "only code is required", tool.inputSchema)
        check(tool.outputSchema and "status" in tool.outputSchema["properties"], "output schema", tool.outputSchema)

        result = await call(session, "print(6*7)")
        check(result.content[0].text == "42\n", "print(6*7) -> 42", result.content)
        check(result.isError is False, "success is not an error", result.isError)
        structured = result.structuredContent
        check(structured["status"] == "success" and structured["exitCode"] == 0, "structured success", structured)
        check(
            structured["stdout"] == "42\n" and structured["durationMs"] > 0,
            "structured stdout, duration",
            structured,
        )

        result = await call(session, "import sys\nprint('partial')\nsys.exit(3)")
        check(result.isError is True, "non-zero exit is an error result", result)
        check(
            result.content[0].text == "partial\nstatus: error\nexit: 3\nerror: exited with code 3",
            "compact error text",
            result.content[0].text,
        )

        result = await call(session, "print(1)", timeout=0)
        check(
            result.structuredContent["status"] == "validation_error",
            "timeout 0 is a validation error",
            result.structuredContent,
        )

        result = await call(session, "print(1)", servers=["github"])
        check(
            "unknown MCP server" in result.structuredContent["error"],
            "unknown server is a validation error",
            result.structuredContent,
        )

        result = await call(session, "import time\nprint('t', flush=True)\ntime.sleep(30)", timeout=1)
        check(
            result.structuredContent["status"] == "timeout" and result.structuredContent["stdout"] == "t\n",
            "timeout keeps partial output",
            result.structuredContent,
        )

        # Cancellation: the only sandbox (pool max 1) runs a 60 s sleep; the
        # client cancels; the next call must get a fresh sandbox well within
        # the 20 s pool wait, which it can only if the cancel killed the run.
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call_and_ignore, session, "import time\ntime.sleep(60)")
            await anyio.sleep(1.0)
            request_id = session._request_id - 1
            await session.send_notification(
                ClientNotification(
                    CancelledNotification(
                        method="notifications/cancelled",
                        params=CancelledNotificationParams(requestId=request_id, reason="test"),
                    )
                )
            )
            await anyio.sleep(0.2)
            tasks.cancel_scope.cancel()
        result = await call(session, "print('after cancel')")
        check(result.content[0].text == "after cancel\n", "a cancelled run frees its sandbox", result.content)

        results = await asyncio.gather(*(call(session, f"print({i})") for i in range(5)))
        check(
            [r.content[0].text for r in results] == [f"{i}\n" for i in range(5)],
            "concurrent calls queue and succeed",
            results,
        )

        await proxy_checks(session, tool)
        await progress_checks(session)

    print("all e2e checks passed")


async def progress_checks(session):
    """A client that sends a progress token hears from a long run at least
    every 5 s (elapsed seconds, the timeout, the last line), and nothing after.
    (Without a token the server sends none: `frontend.rs` ticks only with one.)"""
    heard = []
    loop = asyncio.get_running_loop()

    async def on_progress(progress, total, message):
        heard.append((progress, total, message, loop.time()))

    code = "import time\nfor i in range(12):\n    print('tick', i, flush=True)\n    time.sleep(1)\nprint('done')"
    started = loop.time()
    result = await session.call_tool("run_python", {"code": code, "timeout": 30}, progress_callback=on_progress)
    ended = loop.time()
    check(result.structuredContent["status"] == "success", "a 12 s run succeeds", result.structuredContent)
    # The gaps the client saw: from the call to the first note, between
    # notes, and from the last note to the result.
    times = [started] + [t for *_, t in heard] + [ended]
    gaps = [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]
    check(len(heard) >= 2 and max(gaps) <= 5.0, "progress at least every 5 s during a 12 s run", gaps)
    check(
        [p for p, *_ in heard] == sorted(p for p, *_ in heard) and heard[0][0] >= 3,
        "progress is seconds elapsed",
        heard,
    )
    check(all(total == 30 for _, total, *_ in heard), "total is the timeout", heard)
    check(all(message and message.startswith("tick") for _, _, message, _ in heard), "message is the last line", heard)
    count = len(heard)
    await asyncio.sleep(5)
    check(len(heard) == count, "no progress after the result", heard)


async def proxy_checks(session, tool):
    check("time, everything, fixture" in tool.description, "the tool names the configured servers", tool.description)
    resources = (await session.list_resources()).resources
    check([str(r.uri) for r in resources] == ["resource://mcp-code-exec/capabilities"], "one resource", resources)
    manual = (await session.read_resource(resources[0].uri)).contents[0].text
    check(
        "search_tool_docs" in manual and "`fixture` (`mcp_fixture`): test fixture" in manual,
        "the manual lists the API and servers",
        manual,
    )

    code = """
print(runtime.discovered_servers())
now = await mcp_time.get_current_time(timezone="UTC")
echo = await mcp_everything.echo(message=now["datetime"])
print(echo == "Echo: " + now["datetime"])
"""
    result = await call(session, code, servers=["time", "everything"])
    check(
        result.content[0].text == "['time', 'everything', 'fixture']\nTrue\ntool calls: 2 (2 ok)",
        "discover, call each real server, chain",
        result.content,
    )

    code = """
import asyncio, time
t = time.monotonic()
await asyncio.gather(*(mcp_fixture.slow(seconds=0.5) for _ in range(10)))
print((await mcp_fixture.stats())["max_in_flight"])
"""
    result = await call(session, code, servers=["fixture"])
    check(printed(result) == "10\n", "ten proxied calls in flight at once", result.content)

    code = """
for attempt in ("fail", "crash"):
    try:
        await mcp_fixture.fail(message="boom") if attempt == "fail" else await mcp_fixture.crash()
    except MCPError as e:
        print(attempt, e.tool)
"""
    result = await call(session, code, servers=["fixture"])
    check(printed(result) == "fail fail\ncrash crash\n", "tool errors and a crash raise MCPError", result.content)
    result = await call(session, "print((await mcp_fixture.structured(name='again'))['greeting'])", servers=["fixture"])
    check(printed(result) == "hello again\n", "a killed server is restarted on next use", result.content)


def printed(result):
    """A result's text without its last line when that counts the tool calls."""
    text = result.content[0].text
    head, _, last = text.rpartition("\n")
    return head + "\n" if last.startswith("tool calls: ") else text


async def call_and_ignore(session, code):
    try:
        await call(session, code, timeout=90)
    except Exception:
        pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

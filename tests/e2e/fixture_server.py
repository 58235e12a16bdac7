"""An MCP server of the project's own, for the proxy's edge cases.

Tools: slow (counts concurrency and cancellations), stats, pid, big (an
exact N MiB text, optionally late), structured, fail (an error result), crash (dies mid-call),
add_tool (registers a tool and sends tools/list_changed), hang_tools_list
(later tools/list requests never get an answer; sends tools/list_changed),
noisy_stderr (bytes that are not UTF-8 and lines of any length on stderr).

With `--hang-tools-list`, tools/list never answers from the start.
"""

import asyncio
import os
import sys

from mcp.server.fastmcp import Context, FastMCP

server = FastMCP("fixture")
counters = {"in_flight": 0, "max_in_flight": 0, "cancelled": 0, "completed": 0}
tools_list_hangs = "--hang-tools-list" in sys.argv


async def list_tools():
    if tools_list_hangs:
        await asyncio.Event().wait()
    return await server.list_tools()


server._mcp_server.list_tools()(list_tools)


@server.tool()
async def slow(seconds: float) -> dict:
    """Sleeps, then says so. Tracks how many calls run at once."""
    counters["in_flight"] += 1
    counters["max_in_flight"] = max(counters["max_in_flight"], counters["in_flight"])
    try:
        await asyncio.sleep(seconds)
        counters["completed"] += 1
        return {"slept": seconds}
    except asyncio.CancelledError:
        counters["cancelled"] += 1
        raise
    finally:
        counters["in_flight"] -= 1


@server.tool()
def stats(reset: bool = False) -> dict:
    """Concurrency and cancellation counters of slow()."""
    snapshot = dict(counters)
    if reset:
        counters.update(in_flight=counters["in_flight"], max_in_flight=0, cancelled=0, completed=0)
    return snapshot


@server.tool()
def pid() -> int:
    """The server's process id (tells whether two calls reached one process)."""
    return os.getpid()


@server.tool()
async def big(mib: int, seconds: float = 0) -> str:
    """Exactly `mib` MiB of text: the 16 characters 0-9a-f repeated, after `seconds`."""
    await asyncio.sleep(seconds)
    return "0123456789abcdef" * (mib * 65536)


@server.tool()
def structured(name: str) -> dict:
    """A structured result."""
    return {"greeting": f"hello {name}", "length": len(name)}


@server.tool()
def fail(message: str) -> str:
    """Always fails with `message`."""
    raise ValueError(message)


@server.tool()
def crash() -> str:
    """Exits the server process in the middle of the call."""
    os._exit(1)


@server.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Registers a new tool `name` and notifies tools/list_changed."""

    def added() -> str:
        return f"I am {name}"

    server.add_tool(added, name=name, description=f"added at run time: {name}")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


@server.tool()
async def hang_tools_list(ctx: Context) -> str:
    """From now on tools/list never answers; notifies tools/list_changed."""
    global tools_list_hangs
    tools_list_hangs = True
    await ctx.session.send_tool_list_changed()
    return "tools/list hangs from now on"


@server.tool()
def noisy_stderr(kib: int) -> str:
    """Writes a line that is not UTF-8, a 1 MiB line, then `kib` KiB of lines, to stderr."""
    os.write(2, b"not utf-8: \xff\xfe\xc3\n")
    os.write(2, b"long " * (1 << 18) + b"\n")
    line = b"x" * 1023 + b"\n"
    for _ in range(kib):
        os.write(2, line)
    return f"wrote {kib} KiB to stderr"


if __name__ == "__main__":
    server.run()

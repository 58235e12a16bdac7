"""Host files end to end with the official MCP Python SDK: the read roots are
the client's own (MCP_BRIDGE_HOST_READ=roots, answered by the SDK's roots
callback), a roots/list_changed notification moves them, and a save lands
beneath the write root.

Usage: python host_files.py PATH_TO_MCP_CODE_EXEC
Prints one line per passed check, exits non-zero on the first failure.
"""

import asyncio
import pathlib
import sys
import tempfile

import small_server
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client


def check(condition, what, detail=None):
    if not condition:
        raise AssertionError(f"{what}: {detail!r}")
    print(f"ok  {what}", flush=True)


class Roots:
    """What the client declares, and how often the server asked."""

    def __init__(self, folder):
        self.folder = folder
        self.asked = 0

    async def callback(self, _context):
        self.asked += 1
        return types.ListRootsResult(roots=[types.Root(uri=self.folder.as_uri(), name="project")])


async def read(client, host_path):
    code = "print(open('data.csv').read(), end='')"
    result = await client.call_tool("run_python", {"code": code, "files": {"data.csv": {"host": host_path}}})
    return result.structuredContent


async def main(binary):
    base = pathlib.Path(tempfile.mkdtemp())
    first, second, write = base / "first", base / "second", base / "write"
    for folder in (first, second, write):
        folder.mkdir()
    (first / "data.csv").write_text("first\n")
    (second / "data.csv").write_text("second\n")
    roots = Roots(first)
    env = small_server.environment(base, MCP_BRIDGE_HOST_READ="roots", MCP_BRIDGE_HOST_WRITE=str(write))
    params = StdioServerParameters(command=binary, args=["serve"], env=env, cwd=str(base))
    async with (
        stdio_client(params) as (reader, writer),
        ClientSession(reader, writer, list_roots_callback=roots.callback) as client,
    ):
        await client.initialize()
        tools = await client.list_tools()
        schema = tools.tools[0].inputSchema
        check("save" in schema["properties"], "the save argument is offered when a write root is set", schema)

        report = await read(client, "data.csv")
        check(report["stdout"] == "first\n", "a relative path reads from the client's root", report)
        report = await read(client, str(first / "data.csv"))
        check(report["stdout"] == "first\n" and roots.asked == 1, "the roots are listed once, then kept", roots.asked)
        report = await read(client, str(second / "data.csv"))
        check(
            report["status"] == "validation_error" and "outside every read root" in report["error"],
            "a folder the client did not declare is refused",
            report,
        )

        roots.folder = second
        await client.send_roots_list_changed()
        # The notification and the next call race inside the server: a bounded wait.
        for _ in range(50):
            report = await read(client, "data.csv")
            if report["stdout"] == "second\n":
                break
            await asyncio.sleep(0.1)
        check(report["stdout"] == "second\n" and roots.asked == 2, "roots/list_changed moves the root", report)
        report = await read(client, str(first / "data.csv"))
        check(report["status"] == "validation_error", "the old root is no longer readable", report)

        code = "import os\nos.makedirs('out')\nopen('out/clean.csv', 'w').write('a,b\\n')"
        result = await client.call_tool("run_python", {"code": code, "save": {"out/clean.csv": "data/clean.csv"}})
        report = result.structuredContent
        saved = write / "data" / "clean.csv"
        check(
            report["saved"] == [{"from": "out/clean.csv", "to": str(saved), "bytes": 4}]
            and saved.read_text() == "a,b\n",
            "a save lands beneath the write root",
            report,
        )
        check("saved out/clean.csv" in result.content[0].text, "the text says what was saved", result.content[0].text)
    print("all host-file checks passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

"""Tool approval end to end with the official MCP Python SDK: an `ask` rule of
the tool policy (MCP_BRIDGE_TOOL_POLICY) pauses the call and the server asks
the human through the client (elicitation/create); the SDK's elicitation
callback accepts, declines, cancels or does not answer in time, and a client
without the callback (no elicitation capability) gets its calls refused.

Usage: python approval.py PATH_TO_MCP_CODE_EXEC
Prints one line per passed check, exits non-zero on the first failure.
"""

import asyncio
import json
import pathlib
import sys
import tempfile

import small_server
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

HERE = pathlib.Path(__file__).resolve().parent
CODE = """
async def attempt(name):
    try:
        return (await mcp_fixture.structured(name=name))["greeting"]
    except MCPError as e:
        return "refused: " + str(e)
print(await attempt(NAME))
print((await mcp_fixture.pid()) > 0)
"""


def check(condition, what, detail=None):
    if not condition:
        raise AssertionError(f"{what}: {detail!r}")
    print(f"ok  {what}", flush=True)


class Human:
    """The elicitation callback: answers with `action` (or never, for "hang")
    and keeps what it was asked."""

    def __init__(self):
        self.action = "accept"
        self.asked = []

    async def callback(self, _context, params):
        self.asked.append(params)
        if self.action == "hang":
            await asyncio.sleep(5)  # past the server's 2 s bound; the answer comes too late
            return types.ElicitResult(action="accept", content={})
        return types.ElicitResult(action=self.action, content={} if self.action == "accept" else None)


def environment(base):
    rules = base / "rules"
    rules.write_text("ask fixture.structured\nallow fixture.*\n")
    servers = base / "servers.json"
    fixture = {"command": sys.executable, "args": [str(HERE / "fixture_server.py")]}
    servers.write_text(json.dumps({"mcpServers": {"fixture": fixture}}))
    env = small_server.environment(
        base,
        MCP_SERVERS_CONFIG=str(servers),
        MCP_BRIDGE_TOOL_POLICY=str(rules),
        MCP_BRIDGE_TOOL_APPROVAL_TIMEOUT="2s",
    )
    return env, rules


async def run(client, name):
    code = CODE.replace("NAME", repr(name))
    result = await client.call_tool("run_python", {"code": code, "servers": ["fixture"], "timeout": 60})
    return result.structuredContent


def outcomes(report):
    return [(c["tool"], c["outcome"]) for c in report["toolCalls"]["calls"]]


async def main(binary):
    base = pathlib.Path(tempfile.mkdtemp())
    env, rules = environment(base)
    human = Human()
    params = StdioServerParameters(command=binary, args=["serve"], env=env, cwd=str(base))
    async with (
        stdio_client(params) as (reader, writer),
        ClientSession(reader, writer, elicitation_callback=human.callback) as client,
    ):
        await client.initialize()
        report = await run(client, "big {payload}" + "x" * 10_000)
        check(report["stdout"].startswith("hello big {payload}x"), "an accepted call goes through", report)
        check(outcomes(report) == [("structured", "ok"), ("pid", "ok")], "the result lists it as ok", report)
        check(len(human.asked) == 1, "the human is asked once, for the ask tool only", human.asked)
        message = human.asked[0].message
        check(
            '"structured" of the MCP server "fixture"' in message and f"{rules}:1" in message,
            "the question names the tool, the server and the rule",
            message,
        )
        check('"name"' in message and "big {payload}xxx" in message, "the question shows the arguments", message)
        check("more bytes not shown" in message and len(message) < 5000, "huge arguments are cut", len(message))

        for action, why in [("decline", "the user declined"), ("cancel", "the user cancelled")]:
            human.action = action
            report = await run(client, action)
            first = report["stdout"].splitlines()[0]
            check(
                first.startswith('refused: fixture.structured: tool "structured"')
                and f"({rules}:1): {why}; the call is refused" in first,
                f"a {action} is an MCPError naming the rule",
                report,
            )
            check(report["stdout"].endswith("True\n"), f"after a {action} the run goes on", report)
            check(outcomes(report)[0] == ("structured", "declined"), f"a {action} is listed as declined", report)

        human.action = "hang"
        report = await run(client, "late")
        check(
            "no answer within 2s (MCP_BRIDGE_TOOL_APPROVAL_TIMEOUT)" in report["stdout"],
            "no answer within the bound is a refusal naming the variable",
            report,
        )
        check(report["status"] == "success", "and the run ends well", report)

    async with (
        stdio_client(params) as (reader, writer),
        ClientSession(reader, writer) as client,
    ):
        await client.initialize()
        report = await run(client, "nobody")
        check(
            "this MCP client cannot be asked (it did not declare elicitation)" in report["stdout"]
            and outcomes(report)[0] == ("structured", "denied"),
            "a client without elicitation gets ask calls refused",
            report,
        )
    print("all approval checks passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

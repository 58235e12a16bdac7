"""MCP over streamable HTTP end to end, with the official MCP Python SDK's
streamable-HTTP client: run_python, progress, artifacts; two principals
kept apart (sessions, artifacts, skills, the calls-in-flight quota,
cancellation);
bearer tokens
(missing, wrong, revoked by editing the tokens file), a bad Origin, a body
over 16 MiB.

Usage: python http_client.py PATH_TO_MCP_CODE_EXEC
Starts the server with `serve --http 127.0.0.1:PORT` and a tokens file for
principals ann and bob, prints one line per passed check, exits non-zero on
the first failure.
"""

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

TOKENS = {"ann": "ann-token-5b1f", "bob": "bob-token-9c2e"}


def check(condition, what, detail=None):
    if not condition:
        raise AssertionError(f"{what}: {detail!r}")
    print(f"ok  {what}", flush=True)


def write_tokens(path, names):
    lines = [f"{name}:{hashlib.sha256(TOKENS[name].encode()).hexdigest()}" for name in names]
    with open(path + ".new", "w") as f:
        f.write("# principal:sha256-hex-of-token\n" + "\n".join(lines) + "\n")
    os.replace(path + ".new", path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, server):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not listen")


class Client:
    """One principal's MCP session over streamable HTTP."""

    def __init__(self, session):
        self.session = session

    @classmethod
    async def connect(cls, stack, url, name):
        headers = {"Authorization": f"Bearer {TOKENS[name]}"}
        read, write, _ = await stack.enter_async_context(streamablehttp_client(url, headers=headers))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return cls(session)

    async def run(self, code, **extra):
        result = await self.session.call_tool("run_python", {"code": code, **extra})
        return result.structuredContent


def post(url, headers, body):
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    return httpx.post(url, headers={**base, **headers}, content=body, timeout=30)


INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    b'"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}'
)


async def auth_checks(url, port):
    for headers, what in [({}, "no token"), ({"Authorization": "Bearer not-a-token"}, "a wrong token")]:
        response = post(url, headers, INITIALIZE)
        challenge = response.headers.get("www-authenticate", "")
        check(
            response.status_code == 401
            and f'resource_metadata="http://127.0.0.1:{port}/.well-known/oauth-protected-resource"' in challenge,
            f"{what}: 401 with WWW-Authenticate: Bearer resource_metadata",
            (response.status_code, challenge),
        )
    metadata = httpx.get(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource").json()
    check(metadata["resource"] == url, "the protected-resource metadata names the endpoint", metadata)
    ann = {"Authorization": f"Bearer {TOKENS['ann']}"}
    response = post(url, {**ann, "Origin": "http://evil.example"}, INITIALIZE)
    check(response.status_code == 403, "a bad Origin: 403, even with a token", response.status_code)
    response = post(url, {**ann, "Origin": f"http://localhost:{port}"}, INITIALIZE)
    check(response.status_code == 200, "a loopback Origin is served", response.status_code)
    opened = post(url, ann, INITIALIZE)
    session_id = opened.headers["mcp-session-id"]
    bob = {"Authorization": f"Bearer {TOKENS['bob']}"}
    ping = b'{"jsonrpc":"2.0","id":3,"method":"ping"}'
    response = post(url, {**bob, "Mcp-Session-Id": session_id}, ping)
    check(response.status_code == 404, "another principal cannot use a principal's MCP session", response.status_code)
    response = httpx.get(url, headers={**bob, "Mcp-Session-Id": session_id, "Accept": "text/event-stream"})
    check(response.status_code == 404, "nor open its stream", response.status_code)
    big = b'{"jsonrpc":"2.0","id":2,"method":"ping","pad":"' + b"x" * (17 << 20) + b'"}'
    response = post(url, ann, big)
    check(response.status_code == 413, "a body over 16 MiB: 413", response.status_code)


async def run_progress_and_artifacts(ann, bob):
    report = await ann.run("print(6*7)")
    check(report["stdout"] == "42\n", "run_python over HTTP", report)

    heard = []

    async def on_progress(progress, total, message):
        heard.append((progress, message))

    code = "import time\nprint('working', flush=True)\ntime.sleep(6)\nprint('done')"
    result = await ann.session.call_tool("run_python", {"code": code, "timeout": 30}, progress_callback=on_progress)
    check(result.structuredContent["stdout"] == "working\ndone\n", "a long run ends", result.structuredContent)
    check(heard and heard[0][1] == "working", "progress arrives on the request's stream", heard)

    code = "import os\nos.makedirs('out', exist_ok=True)\nopen('out/secret.txt', 'w').write('ann only')"
    report = await ann.run(code)
    check(report.get("files"), "a run returns a file", report)
    files = report["files"]
    uri = files[0]["uri"]
    read = await ann.session.read_resource(uri)
    check(read.contents[0].text == "ann only", "the owner reads its artifact", read)
    listed = [str(r.uri) for r in (await ann.session.list_resources()).resources]
    check(uri in listed, "the owner lists its artifact", listed)
    listed = [str(r.uri) for r in (await bob.session.list_resources()).resources]
    check(uri not in listed, "another principal does not list it", listed)
    errors = []
    for candidate in [uri, uri.replace("secret.txt", "never-made.txt")]:
        try:
            await bob.session.read_resource(candidate)
            errors.append(None)
        except McpError as error:
            errors.append(error.error.message.replace(candidate, "URI"))
    check(
        errors[0] is not None and errors[0] == errors[1],
        "another principal cannot read it, and is told what it is told of a URI never made",
        errors,
    )


def stateless_request(url, name, method, params, mcp_name=None):
    """A 2026-07-28 request: no initialize, no MCP session, the protocol in `_meta` and headers.
    Returns the JSON-RPC answer (its `result` or its `error`)."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": meta}}
    headers = {
        "Authorization": f"Bearer {TOKENS[name]}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    if mcp_name is not None:
        headers["Mcp-Name"] = mcp_name
    response = post(url, headers, json.dumps(body).encode())
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    for line in response.text.splitlines():
        if line.startswith("data:") and ('"result"' in line or '"error"' in line):
            return json.loads(line[5:])
    raise AssertionError(f"no answer: {response.status_code} {response.text[:500]}")


def stateless_call(url, name, code, session=None, **extra):
    """A 2026-07-28 tools/call of run_python (in `session`, if named); its structured result."""
    arguments = {"code": code, **({"session": session} if session else {}), **extra}
    answer = stateless_request(url, name, "tools/call", {"name": "run_python", "arguments": arguments}, "run_python")
    if "result" not in answer:
        raise AssertionError(f"no result: {answer}")
    return answer["result"]["structuredContent"]


async def stateless_checks(url):
    stateless_call(url, "ann", "y = 'ann'", "st")
    report = stateless_call(url, "bob", "print(globals().get('y'))", "st")
    check(report["stdout"] == "None\n", "2026-07-28 (stateless) requests are kept apart by principal", report)
    report = stateless_call(url, "ann", "print(y)", "st")
    check(report["stdout"] == "ann\n", "2026-07-28: a principal's session goes on across requests", report)
    for name in ("ann", "bob"):
        stateless_call(url, name, "", "st", end_session=True)


async def skill_checks(url):
    save = 'print(runtime.save_skill("ann_tools", "def double(x):\\n    return 2 * x\\n", "Doubles.")["replaced"])'
    report = stateless_call(url, "ann", save)
    check(report["stdout"] == "False\n", "a principal saves a skill", report)
    report = stateless_call(url, "ann", "from skills import ann_tools\nprint(ann_tools.double(21))")
    check(report["stdout"] == "42\n", "its later runs import it", report)
    report = stateless_call(url, "bob", "print(runtime.list_skills())")
    check(report["stdout"] == "[]\n", "another principal's runs do not see it", report)
    uris = {}
    for name in ("ann", "bob"):
        answer = stateless_request(url, name, "skills/list", {})
        uris[name] = [skill["uri"] for skill in answer["result"]["skills"]]
    uri = "skill://ann-tools/SKILL.md"
    check(uris == {"ann": [uri], "bob": []}, "skills/list lists a principal's own skills", uris)
    answer = stateless_request(url, "ann", "skills/get", {"uri": uri})
    check(answer["result"]["skill"]["frontmatter"]["description"] == "Doubles.", "skills/get serves it", answer)
    answer = stateless_request(url, "bob", "skills/get", {"uri": uri})
    check("error" in answer, "skills/get refuses it to another principal", answer)
    source = "skill://ann-tools/ann_tools.py"
    answer = stateless_request(url, "ann", "resources/read", {"uri": source}, source)
    check("return 2 * x" in answer["result"]["contents"][0]["text"], "its files are resources", answer)
    answer = stateless_request(url, "bob", "resources/read", {"uri": source}, source)
    check("error" in answer, "another principal cannot read its files", answer)


async def session_checks(ann, bob):
    await ann.run("x = 'ann'", session="eda")
    report = await bob.run("print(globals().get('x'))", session="eda")
    check(
        report["stdout"] == "None\n" and report["session"]["state"] == "new",
        "two principals naming a session alike get two sessions",
        report,
    )
    report = await ann.run("print(x)", session="eda")
    check(report["stdout"] == "ann\n", "each keeps its own state", report)
    for client in (ann, bob):
        await client.run("", session="eda", end_session=True)


async def quota_checks(ann, bob):
    slow = asyncio.create_task(ann.run("import time; time.sleep(4); print('slow')"))
    await asyncio.sleep(1.5)
    refused = await ann.run("print(1)")
    check(
        refused["status"] == "error" and "MCP_BRIDGE_MAX_CALLS_PER_CLIENT=1" in refused["error"],
        "a second call in flight of one principal is refused, naming the variable",
        refused,
    )
    other = await bob.run("print('bob')")
    check(other["stdout"] == "bob\n", "another principal is served meanwhile", other)
    check((await slow)["stdout"] == "slow\n", "the first call ends", None)


async def raw_session(client, url, name):
    """A 2025-11-25 MCP session opened with raw requests: its headers."""
    headers = {
        "Authorization": f"Bearer {TOKENS[name]}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    opened = await client.post(url, headers=headers, content=INITIALIZE)
    headers = {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    await client.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


async def slow_call(client, url, headers, request_id):
    """tools/call of a 3 s run: its stdout, or None if no result came."""
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "run_python", "arguments": {"code": "import time; time.sleep(3); print('slow')"}},
    }
    response = await client.post(url, headers=headers, json=body, timeout=30)
    for line in response.text.splitlines():
        if line.startswith("data:") and '"result"' in line:
            return json.loads(line[5:])["result"]["structuredContent"]["stdout"]
    return None


def cancel(request_id):
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}


async def cancellation_checks(url):
    async with httpx.AsyncClient(timeout=30) as client:
        ann = await raw_session(client, url, "ann")
        bob = await raw_session(client, url, "bob")
        call = asyncio.create_task(slow_call(client, url, ann, 41))
        await asyncio.sleep(1.5)
        response = await client.post(url, headers={**bob, "Mcp-Session-Id": ann["Mcp-Session-Id"]}, json=cancel(41))
        status = response.status_code
        check(status == 404, "another principal cannot cancel in a principal's session", status)
        response = await client.post(url, headers=bob, json=cancel(41))
        status = response.status_code
        check(status == 202, "a cancel in its own session names its own requests only", status)
        check(await call == "slow\n", "the call another principal tried to cancel ends with its result", None)
        call = asyncio.create_task(slow_call(client, url, ann, 42))
        await asyncio.sleep(1.5)
        await client.post(url, headers=ann, json=cancel(42))
        check(await call is None, "its own principal can cancel it", None)


async def revocation_check(url, tokens):
    write_tokens(tokens, ["ann"])
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = post(url, {"Authorization": f"Bearer {TOKENS['bob']}"}, INITIALIZE).status_code
        if status == 401:
            break
        await asyncio.sleep(0.2)
    check(status == 401, "a token removed from the file is refused (reloaded on change)", status)
    status = post(url, {"Authorization": f"Bearer {TOKENS['ann']}"}, INITIALIZE).status_code
    check(status == 200, "the tokens still in the file are served", status)


async def main(binary):
    home = tempfile.mkdtemp()
    tokens = os.path.join(home, "tokens")
    write_tokens(tokens, ["ann", "bob"])
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    env = dict(os.environ)
    env.update(
        HOME=home,
        MCP_BRIDGE_POOL_MAX="4",
        MCP_BRIDGE_POOL_MIN_IDLE="2",
        MCP_BRIDGE_MAX_SESSIONS="2",
        MCP_BRIDGE_MAX_CALLS_PER_CLIENT="1",
        MCP_BRIDGE_METRICS_ADDR="off",
        MCP_BRIDGE_HTTP_TOKENS_FILE=tokens,
        MCP_BRIDGE_SKILLS_DIR=os.path.join(home, "skills"),
    )
    server = subprocess.Popen([binary, "serve", "--http", f"127.0.0.1:{port}"], env=env, cwd=home)
    try:
        wait_for_port(port, server)
        await auth_checks(url, port)
        async with contextlib.AsyncExitStack() as stack:
            ann = await Client.connect(stack, url, "ann")
            bob = await Client.connect(stack, url, "bob")
            await run_progress_and_artifacts(ann, bob)
            await session_checks(ann, bob)
            await quota_checks(ann, bob)
        await stateless_checks(url)
        await skill_checks(url)
        await cancellation_checks(url)
        await revocation_check(url, tokens)
        async with contextlib.AsyncExitStack() as stack:
            ann = await Client.connect(stack, url, "ann")
            # The SDK reads tools/list once, to check results against the schema.
            await ann.run("print(1)")
            slow = asyncio.create_task(ann.run("import time; time.sleep(3); print('drained')"))
            await asyncio.sleep(1)
            server.terminate()
            report = await slow
            check(report["stdout"] == "drained\n", "SIGTERM: a call in flight still gets its result", report)
    finally:
        server.terminate()
        code = server.wait(timeout=40)
    check(code == 0, "SIGTERM: the server exits cleanly", code)
    print("all http checks passed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

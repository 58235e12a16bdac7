# mcp-code-exec: the `mcp` package as sandboxed code sees it.
#
# The agent compiles this once at startup (it arrives as argv[1], no files are
# mounted) and runs it in each run's child with `install(...)`, which builds
# the modules `mcp`, `mcp.runtime`, `mcp.servers` and `mcp.servers.<alias>`
# from the metadata of that run (so any warm container serves any servers),
# and binds `mcp_servers`, `mcp_<alias>` and `runtime` in the run's globals.
#
# Calls travel as one JSON line each on a pipe to the agent, which relays them
# to the host; answers come back the same way, matched by id, so any number of
# calls can be in flight at once (asyncio.gather works). A reader thread
# resolves the futures, which serves async code and blocking code alike.

import asyncio
import concurrent.futures
import json
import keyword
import os
import re
import sys
import threading
import types


class MCPError(Exception):
    """A proxied MCP call failed: the tool reported an error, or the server
    could not be reached. `server` and `tool` say which."""

    def __init__(self, message, server=None, tool=None, result=None):
        super().__init__(message)
        self.server = server
        self.tool = tool
        self.result = result


class _Channel:
    """Request/answer lines to the agent, answers matched to futures by id."""

    def __init__(self, call_fd, answer_fd, max_call_bytes):
        self._out = call_fd
        self._in = answer_fd
        self._max_call_bytes = max_call_bytes
        self._lock = threading.Lock()
        self._pending = {}
        self._next_id = 0
        self._reader = None

    def request(self, server, tool, arguments):
        future = concurrent.futures.Future()
        data = json.dumps({"server": server, "tool": tool, "arguments": arguments}).encode()
        if len(data) + 32 > self._max_call_bytes:  # room for the id the line gets
            raise MCPError(
                f"{server}.{tool}: the call's arguments are {len(data)} bytes; a call may carry at most "
                f"{self._max_call_bytes >> 20} MiB",
                server,
                tool,
            )
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            self._pending[ident] = future
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="mcp-answers", daemon=True)
                self._reader.start()
            data = b'{"id":%d,%s\n' % (ident, data[1:])
            while data:
                data = data[os.write(self._out, data) :]
        return future

    def _read(self):
        """Resolves each answer's future, for the process's life. A line that
        is not an answer is skipped; if reading itself fails, the calls in
        flight fail and the next call starts a new reader (a reader that
        died would leave every later call waiting forever)."""
        try:
            self._read_answers()
        except BaseException as exc:  # the calls in flight must hear of it
            self._fail_all(MCPError(f"the connection to the MCP proxy broke: {type(exc).__name__}: {exc}"))
            return
        self._fail_all(MCPError("the connection to the MCP proxy closed"))

    def _read_answers(self):
        buffer = bytearray()
        while chunk := os.read(self._in, 1 << 20):
            end = chunk.rfind(b"\n")  # only the new chunk is searched
            if end < 0:
                buffer += chunk
                continue
            lines = (bytes(buffer) + chunk[:end]).split(b"\n")
            buffer = bytearray(chunk[end + 1 :])
            for line in lines:
                self._resolve(line)

    def _resolve(self, line):
        try:
            answer = json.loads(line)
        except (ValueError, RecursionError):
            return  # not an answer (e.g. the rest of one whose start was lost)
        ident = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(ident, int):
            return
        with self._lock:
            future = self._pending.pop(ident, None)
        if future is not None:
            _settle(future, future.set_result, answer)

    def _fail_all(self, error):
        with self._lock:
            pending, self._pending = self._pending, {}
            self._reader = None
        for future in pending.values():
            _settle(future, future.set_exception, error)


def _settle(future, settle, value):
    """`settle(value)`, unless the future was cancelled meanwhile (an asyncio
    timeout around the call cancels it from another thread)."""
    try:
        settle(value)
    except concurrent.futures.InvalidStateError:
        pass


def _unwrap(server, tool, answer, wraps_result=False):
    """The value a tool call gives Python code: the structured content (the
    value itself when the tool's output schema is the `{"result": value}`
    wrapper of FastMCP-style servers), else the text, decoded when JSON."""
    if not answer.get("ok"):
        raise MCPError(f"{server}.{tool}: {answer.get('error')}", server, tool)
    result = answer["result"]
    if result.get("isError"):
        raise MCPError(f"{server}.{tool} failed: {_text(result) or 'no details'}", server, tool, result)
    structured = result.get("structuredContent")
    if structured is not None:
        if wraps_result and isinstance(structured, dict) and structured.keys() == {"result"}:
            return structured["result"]
        return structured
    text = _text(result)
    if text is None:
        return result.get("content")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _text(result):
    texts = [block.get("text", "") for block in result.get("content") or [] if block.get("type") == "text"]
    return "\n".join(texts) if texts else None


_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list", "object": "dict"}


def _signature(schema):
    props = (schema or {}).get("properties") or {}
    required = set((schema or {}).get("required") or [])
    parts = []
    for name, spec in sorted(props.items(), key=lambda item: item[0] not in required):
        kind = _TYPES.get((spec or {}).get("type"), "object")
        parts.append(f"{name}: {kind}" if name in required else f"{name}: {kind} = None")
    return ", ".join(parts)


def _inspect_signature(schema):
    """A real signature (for help() and inspect), when every name is an identifier."""
    import inspect

    props = (schema or {}).get("properties") or {}
    required = set((schema or {}).get("required") or [])
    if not all(name.isidentifier() and not keyword.iskeyword(name) for name in props):
        return None
    annotations = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}
    params = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if name in required else None,
            annotation=annotations.get((spec or {}).get("type"), inspect.Parameter.empty),
        )
        for name, spec in props.items()
    ]
    return inspect.Signature(params)


class Runtime(types.ModuleType):
    """mcp.runtime: discover servers and tools, read their docs, call them."""

    MCPError = MCPError

    def _setup(self, channel, servers, discovered):
        self._channel = channel
        self._servers = {s["name"]: s for s in servers}
        self._discovered = discovered

    # -- discovery
    def discovered_servers(self, detailed=False):
        """Every configured server (callable ones are those passed in `servers`)."""
        if detailed:
            return [dict(s, loaded=s["name"] in self._servers) for s in self._discovered]
        return [s["name"] for s in self._discovered]

    def list_servers(self):
        """The servers this run may call."""
        return list(self._servers)

    def list_tools(self, server):
        return [t["name"] for t in self._server(server)["tools"]]

    def describe_server(self, name):
        server = self._server(name)
        return {
            "name": server["name"],
            "alias": server["alias"],
            "description": server.get("description"),
            "tools": [{"name": t["name"], "description": t.get("description")} for t in server["tools"]],
        }

    def list_loaded_server_metadata(self):
        return [self.describe_server(name) for name in self._servers]

    def query_tool_docs(self, server, tool=None, detail="summary"):
        tools = self._server(server)["tools"]
        if tool is not None:
            tools = [t for t in tools if t["name"] == tool]
            if not tools:
                raise MCPError(f"server {server!r} has no tool {tool!r}", server, tool)
        return [self._doc(server, t, detail) for t in tools]

    def search_tool_docs(self, query, limit=5, detail="summary"):
        """Tools ranked by how well name and description match the query words."""
        words = [w for w in re.split(r"\W+", query.lower()) if w]
        scored = []
        for server in self._servers.values():
            for tool in server["tools"]:
                name = tool["name"].lower()
                text = f"{name} {(tool.get('description') or '').lower()} {server['name'].lower()}"
                score = sum(3 * (w in name) + text.count(w) for w in words)
                if score:
                    scored.append((-score, server["name"], tool["name"], server, tool))
        scored.sort(key=lambda item: item[:3])
        return [self._doc(s["name"], t, detail) for _, _, _, s, t in scored[:limit]]

    def capability_summary(self):
        lines = []
        for server in self._servers.values():
            names = ", ".join(t["name"] for t in server["tools"])
            lines.append(f"{server['name']} (mcp_{server['alias']}): {names}")
        return "\n".join(lines) or "no MCP servers in this run (pass servers=[...] to run_python)"

    def _doc(self, server, tool, detail):
        doc = {"server": server, "tool": tool["name"], "description": tool.get("description")}
        if detail == "full":
            doc["input_schema"] = tool.get("input_schema")
        return doc

    def _server(self, name):
        try:
            return self._servers[name]
        except KeyError:
            available = list(self._servers)
            raise MCPError(f"server {name!r} is not available in this run; available: {available}", name) from None

    # -- calls
    async def call_tool(self, server, tool, arguments=None):
        answer = await asyncio.wrap_future(self._request(server, tool, arguments))
        return _unwrap(server, tool, answer, self._wraps_result(server, tool))

    def call_tool_sync(self, server, tool, arguments=None):
        answer = self._request(server, tool, arguments).result()
        return _unwrap(server, tool, answer, self._wraps_result(server, tool))

    async def call_tool_raw(self, server, tool, arguments=None):
        """The tool's whole CallToolResult as a dict (content, structuredContent, isError)."""
        answer = await asyncio.wrap_future(self._request(server, tool, arguments))
        if not answer.get("ok"):
            raise MCPError(f"{server}.{tool}: {answer.get('error')}", server, tool)
        return answer["result"]

    def _wraps_result(self, server, tool):
        return any(t["name"] == tool and t.get("wraps_result") for t in self._servers[server]["tools"])

    def _request(self, server, tool, arguments):
        self._server(server)
        return self._channel.request(server, tool, arguments or {})


class Server:
    """An MCP server as sandboxed code sees it (`mcp_<alias>`,
    `mcp_servers[name]`): one async function per tool."""

    def __init__(self, runtime, server):
        self._runtime = runtime
        self._server = server
        self.name = server["name"]
        self.description = server.get("description")
        for tool in server["tools"]:
            setattr(self, tool["alias"], _tool_function(runtime, server, tool))

    def __repr__(self):
        return f"<MCP server {self.name!r}: {', '.join(t['name'] for t in self._server['tools'])}>"

    def __dir__(self):
        return [t["alias"] for t in self._server["tools"]]


def _tool_function(runtime, server, tool):
    server_name, tool_name = server["name"], tool["name"]

    async def call(*args, **kwargs):
        if args:
            if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
                kwargs = args[0]
            else:
                raise TypeError(f"{tool_name}() takes keyword arguments (or one dict)")
        return await runtime.call_tool(server_name, tool_name, kwargs)

    call.__name__ = call.__qualname__ = tool["alias"]
    call.__doc__ = f"{tool.get('description') or ''}\n\n{tool_name}({_signature(tool.get('input_schema'))})".strip()
    signature = _inspect_signature(tool.get("input_schema"))
    if signature is not None:
        call.__signature__ = signature
    call.sync = lambda **kwargs: runtime.call_tool_sync(server_name, tool_name, kwargs)
    return call


def connect(call_fd, answer_fd, max_call_bytes):
    """The process's one channel to the agent: every run of a process (a
    session's calls) shares it, so one reader thread gets every answer and
    call ids never repeat."""
    return _Channel(call_fd, answer_fd, max_call_bytes)


def install(env, channel, servers, discovered):
    """Builds the modules for this run and binds the globals in `env`.
    `channel` comes from `connect`."""
    package = types.ModuleType("mcp", "MCP servers proxied into the sandbox.")
    package.__path__ = []
    runtime = Runtime("mcp.runtime", Runtime.__doc__)
    runtime._setup(channel, servers, discovered)
    servers_package = types.ModuleType("mcp.servers", "One module per MCP server of this run.")
    servers_package.__path__ = []
    package.runtime, package.servers, package.MCPError = runtime, servers_package, MCPError
    sys.modules.update({"mcp": package, "mcp.runtime": runtime, "mcp.servers": servers_package})
    by_name = {}
    for definition in servers:
        server = Server(runtime, definition)
        by_name[definition["name"]] = server
        module = types.ModuleType(f"mcp.servers.{definition['alias']}", definition.get("description"))
        for tool in definition["tools"]:
            setattr(module, tool["alias"], getattr(server, tool["alias"]))
        module.__all__ = [tool["alias"] for tool in definition["tools"]]
        sys.modules[module.__name__] = module
        setattr(servers_package, definition["alias"], module)
        env[f"mcp_{definition['alias']}"] = server
    env["mcp_servers"] = by_name
    env["runtime"] = runtime
    env["MCPError"] = MCPError

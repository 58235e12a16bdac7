"""The sandbox's `mcp` package without a container: results to Python
values, signatures from schemas, tool search, and the call channel over pipes."""

import json
import os
import sys
import threading

import pytest

TIME = {
    "name": "time",
    "alias": "time",
    "description": "clock",
    "tools": [
        {
            "name": "get_current_time",
            "alias": "get_current_time",
            "description": "the current time in a timezone",
            "input_schema": {"properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
        },
        {"name": "pid", "alias": "pid", "description": "a number", "wraps_result": True},
    ],
}


def answer(result, ok=True):
    return {"ok": ok, "result": result} if ok else {"ok": False, "error": result}


def test_results_become_python_values(mcp_runtime):
    unwrap = mcp_runtime._unwrap
    assert unwrap("s", "t", answer({"structuredContent": {"a": 1}, "content": []})) == {"a": 1}
    assert unwrap("s", "t", answer({"structuredContent": {"result": 7}}), wraps_result=True) == 7
    assert unwrap("s", "t", answer({"structuredContent": {"result": 7}})) == {"result": 7}
    wrapped_object = {"structuredContent": {"result": 7, "more": 1}}
    assert unwrap("s", "t", answer(wrapped_object), wraps_result=True) == {"result": 7, "more": 1}
    assert unwrap("s", "t", answer({"content": [{"type": "text", "text": "[1, 2]"}]})) == [1, 2]
    assert unwrap("s", "t", answer({"content": [{"type": "text", "text": "plain"}]})) == "plain"
    image = [{"type": "image", "data": "AA==", "mimeType": "image/png"}]
    assert unwrap("s", "t", answer({"content": image})) == image


def test_errors_raise_mcp_error_naming_server_and_tool(mcp_runtime):
    with pytest.raises(mcp_runtime.MCPError, match=r"s\.t failed: bad input") as raised:
        mcp_runtime._unwrap("s", "t", answer({"isError": True, "content": [{"type": "text", "text": "bad input"}]}))
    assert (raised.value.server, raised.value.tool) == ("s", "t")
    with pytest.raises(mcp_runtime.MCPError, match="server died"):
        mcp_runtime._unwrap("s", "t", answer("server died", ok=False))


def test_signatures_come_from_the_input_schema(mcp_runtime):
    schema = {"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "required": ["a"]}
    assert mcp_runtime._signature(schema) == "a: str, b: int = None"
    signature = mcp_runtime._inspect_signature(schema)
    assert str(signature) == "(*, b: int = None, a: str)"
    assert mcp_runtime._inspect_signature({"properties": {"not-an-identifier": {}}}) is None


def test_search_ranks_by_name_and_description(mcp_runtime):
    runtime = mcp_runtime.Runtime("mcp.runtime")
    runtime._setup(None, [TIME], [{"name": "time"}, {"name": "github"}])
    found = runtime.search_tool_docs("timezone time")
    # The name match ranks first; the server's name matches every tool of it.
    assert [doc["tool"] for doc in found] == ["get_current_time", "pid"]
    assert runtime.discovered_servers() == ["time", "github"]
    with pytest.raises(mcp_runtime.MCPError, match=r"available: \['time'\]"):
        runtime.list_tools("github")


def fake_agent(call_r, answer_w, reply):
    """Reads call lines and answers each with reply(call) until EOF."""
    with os.fdopen(call_r, "rb") as calls, os.fdopen(answer_w, "wb", buffering=0) as answers:
        for line in calls:
            call = json.loads(line)
            answers.write(json.dumps(reply(call)).encode() + b"\n")


def test_calls_travel_as_lines_and_answers_match_by_id(mcp_runtime):
    call_r, call_w = os.pipe()
    answer_r, answer_w = os.pipe()
    echo = lambda call: {"id": call["id"], "ok": True, "result": {"structuredContent": call["arguments"]}}  # noqa: E731
    threading.Thread(target=fake_agent, args=(call_r, answer_w, echo), daemon=True).start()
    env = {}
    channel = mcp_runtime.connect(call_w, answer_r, 1 << 20)
    mcp_runtime.install(env, channel, [TIME], [TIME])
    assert env["mcp_time"].get_current_time.sync(timezone="UTC") == {"timezone": "UTC"}
    mcp_runtime.install(env, channel, [TIME], [TIME])  # a session's next call: the same channel
    assert env["mcp_time"].get_current_time.sync(timezone="CET") == {"timezone": "CET"}
    assert env["runtime"].call_tool_sync("time", "pid", {"result": 5}) == 5, "a wrapped result is unwrapped"
    assert sys.modules["mcp.servers.time"].get_current_time.__doc__.endswith("get_current_time(timezone: str)")
    with pytest.raises(mcp_runtime.MCPError, match="at most 1 MiB"):
        env["runtime"].call_tool_sync("time", "pid", {"x": "y" * (1 << 20)})
    os.close(call_w)


@pytest.fixture
def channel(mcp_runtime):
    """A channel over pipes, and the agent's end of its answers."""
    call_r, call_w = os.pipe()
    answer_r, answer_w = os.pipe()
    yield mcp_runtime._Channel(call_w, answer_r, 1 << 20), answer_w
    for fd in (call_r, call_w, answer_r, answer_w):
        try:
            os.close(fd)
        except OSError:
            pass  # closed by the test


def test_a_closed_channel_fails_calls_in_flight_and_later_ones(mcp_runtime, channel):
    channel, answers = channel
    future = channel.request("time", "pid", {})
    os.close(answers)
    with pytest.raises(mcp_runtime.MCPError, match="closed"):
        future.result(timeout=5)
    with pytest.raises(mcp_runtime.MCPError, match="closed"):
        channel.request("time", "pid", {}).result(timeout=5)


def test_a_bad_line_or_a_cancelled_call_does_not_stop_the_answers(channel):
    channel, answers = channel
    cancelled = channel.request("time", "pid", {})
    waiting = channel.request("time", "pid", {})
    assert cancelled.cancel()
    # The rest of an answer whose start was lost, garbage, JSON that is no
    # answer, an answer to the cancelled call, then the awaited one.
    os.write(answers, b'xx"}\n\xff\n[1]\n{"id": [1]}\n' + b"[" * 5000 + b"\n")
    os.write(answers, b'{"id": 1, "ok": true}\n{"id": 2, "ok": true, "result": 5}\n')
    assert waiting.result(timeout=5) == {"id": 2, "ok": True, "result": 5}
    later = channel.request("time", "pid", {})
    os.write(answers, b'{"id": 3, "ok": true}\n')
    assert later.result(timeout=5)["id"] == 3

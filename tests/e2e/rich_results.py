"""Rich results end to end with the official MCP Python SDK: images, files in,
files out, artifacts and their expiry and eviction.

Usage: python rich_results.py PATH_TO_MCP_CODE_EXEC
Spawns the server over stdio with a short artifact TTL and a small artifact
budget, prints one line per passed check, exits non-zero on the first failure.
"""

import asyncio
import base64
import hashlib
import io
import os
import sys
import tempfile

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError
from PIL import Image

TTL_SECONDS = 4
ARTIFACT_BUDGET = 3 << 20


def check(condition, what, detail=None):
    if not condition:
        raise AssertionError(f"{what}: {detail!r}")
    print(f"ok  {what}", flush=True)


def png_size(block):
    return Image.open(io.BytesIO(base64.b64decode(block.data))).size


async def run(session, code, **extra):
    return await session.call_tool("run_python", {"code": code, **extra})


def blocks(result, kind):
    return [block for block in result.content if block.type == kind]


async def images(session):
    result = await run(
        session,
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)\n"
        "ax.plot([0, 1, 2], [0, 1, 4])\nplt.show()\n"
        "from PIL import Image\ndisplay(Image.new('RGB', (50, 20), 'blue'))\nprint('drawn')",
    )
    found = blocks(result, "image")
    check(result.content[0].type == "text" and result.content[0].text.startswith("drawn"), "text comes first", result)
    check([png_size(b) for b in found] == [(640, 480), (50, 20)], "plt.show() and display(): two PNGs, in order", found)
    check(all(b.mimeType == "image/png" for b in found), "image/png", found)
    meta = result.structuredContent["images"]
    check(
        [(m["index"], m["width"], m["height"], m["mimeType"]) for m in meta]
        == [(0, 640, 480, "image/png"), (1, 50, 20, "image/png")],
        "structured content lists the images",
        meta,
    )
    check(
        all(set(m) == {"index", "mimeType", "bytes", "width", "height"} for m in meta),
        "image entries are metadata only: no base64 in structured content",
        meta,
    )

    result = await run(
        session,
        "import matplotlib.pyplot as plt\nimport numpy as np\nfig = plt.figure(figsize=(50, 50), dpi=100)\n"
        "plt.imshow(np.random.rand(500, 500))\n",  # left open: shown at the end of the run
    )
    (big,) = blocks(result, "image")
    width, height = png_size(big)
    check(max(width, height) <= 1024, "a 5000x5000 figure is scaled to 1024 px", (width, height))
    check(len(base64.b64decode(big.data)) <= 512 * 1024, "and to at most 512 KiB", len(big.data))

    result = await run(session, "from PIL import Image\nfor _ in range(11):\n    display(Image.new('L', (8, 8)))")
    check(len(blocks(result, "image")) == 8, "at most 8 images per run", len(result.content))
    check("3 more images" in result.content[0].text, "the rest are counted in the text", result.content[0].text)


async def files_in(session):
    payload = bytes(range(256)) * 4
    result = await run(
        session,
        "import hashlib\nprint(open('data/table.csv').read().strip())\n"
        "print(hashlib.sha256(open('blob.bin', 'rb').read()).hexdigest())",
        files={"data/table.csv": "a,b\n1,2\n", "blob.bin": {"base64": base64.b64encode(payload).decode()}},
    )
    check(result.structuredContent["status"] == "success", "files: a run that reads them", result.content)
    check(
        result.structuredContent["stdout"] == f"a,b\n1,2\n{hashlib.sha256(payload).hexdigest()}\n",
        "files round-trip: text and binary",
        result.structuredContent["stdout"],
    )
    for bad in ("../escape.txt", "/etc/passwd", "a/../../b", ""):
        result = await run(session, "print(1)", files={bad: "x"})
        check(
            result.structuredContent["status"] == "validation_error"
            and repr(bad)[1:-1] in result.structuredContent["error"],
            f"path {bad!r} is a validation error naming it",
            result.structuredContent,
        )


async def files_out(session):
    result = await run(
        session,
        "import os\nos.makedirs('out/sub', exist_ok=True)\nopen('out/summary.txt', 'w').write('small text')\n"
        "open('out/sub/data.bin', 'wb').write(bytes(range(256)) * 1024)\n",
    )
    resources = [b for b in result.content if b.type == "resource"]
    links = [b for b in result.content if b.type == "resource_link"]
    check(
        len(resources) == 1 and resources[0].resource.text == "small text",
        "a small text file comes back inline",
        resources,
    )
    check(
        len(links) == 1 and str(links[0].uri).startswith("artifact://") and str(links[0].uri).endswith("/sub/data.bin"),
        "a binary file is a resource link",
        links,
    )
    uri = str(links[0].uri)
    read = await session.read_resource(uri)
    check(base64.b64decode(read.contents[0].blob) == bytes(range(256)) * 1024, "the artifact reads back whole", uri)
    listed = [r.uri for r in (await session.list_resources()).resources]
    check(str(uri) in [str(u) for u in listed], "resources/list shows the live artifact", listed)
    files = result.structuredContent["files"]
    check(
        sorted(f["path"] for f in files) == ["sub/data.bin", "summary.txt"], "structured content lists the files", files
    )

    # The budget (3 MiB) evicts the least recently used first.
    first = await run(
        session, "import os\nos.makedirs('out', exist_ok=True)\nopen('out/one.bin', 'wb').write(b'1' * (2 << 20))"
    )
    second = await run(
        session, "import os\nos.makedirs('out', exist_ok=True)\nopen('out/two.bin', 'wb').write(b'2' * (2 << 20))"
    )
    first_uri = str(blocks(first, "resource_link")[0].uri)
    second_uri = str(blocks(second, "resource_link")[0].uri)
    try:
        await session.read_resource(first_uri)
        check(False, "the oldest artifact was evicted")
    except McpError as error:
        check(
            "evicted" in str(error) and "expired" not in str(error),
            "the oldest artifact was evicted, with a clear error",
            str(error),
        )
    check((await session.read_resource(second_uri)).contents, "the newest is still there")

    await asyncio.sleep(TTL_SECONDS + 1)
    try:
        await session.read_resource(second_uri)
        check(False, "an artifact is gone after its TTL")
    except McpError as error:
        check("expired" in str(error), "an artifact is gone after its TTL, with a clear error", str(error))
    try:
        await session.read_resource("artifact://nope/x")
        check(False, "an unknown artifact is an error")
    except McpError as error:
        check("no artifact" in str(error), "an unknown artifact is a clear error", str(error))

    result = await run(
        session,
        "import os\nos.makedirs('out', exist_ok=True)\nwith open('out/huge.bin', 'wb') as f:\n"
        "    for _ in range(1024):\n        f.write(b'x' * (1 << 20))\n",
        timeout=60,
    )
    text = result.content[0].text
    check(
        result.structuredContent["status"] == "error"
        and "No space left on device" in result.structuredContent["stderr"],
        "1 GiB into out/ is stopped by the workspace size",
        text,
    )
    check("left behind" in text, "and what could not be returned is said", text)


async def main(binary):
    env = dict(os.environ)
    home = tempfile.mkdtemp()
    env.update(
        HOME=home,
        MCP_BRIDGE_POOL_MAX="2",
        MCP_BRIDGE_POOL_MIN_IDLE="1",
        MCP_BRIDGE_ARTIFACT_TTL=f"{TTL_SECONDS}s",
        MCP_BRIDGE_ARTIFACT_BYTES=str(ARTIFACT_BUDGET),
        MCP_BRIDGE_METRICS_ADDR="off",
        MCP_BRIDGE_LOG_LEVEL="warn",
    )
    params = StdioServerParameters(command=binary, args=["serve"], env=env, cwd=home)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await images(session)
        await files_in(session)
        await files_out(session)
    print("all rich-result checks passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

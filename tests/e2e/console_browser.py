"""The live web console (the side port's `/`) in a real browser: headless
Chromium driven by Selenium, while the official MCP Python SDK makes the
calls over stdio. A call shows up live, a plot's image loads in the expanded
detail, hostile output stays text (no element, no script, no CSP report),
a running call is shown running and then finished, the CSP header is strict,
and the audit log has one line per call.

Usage: python console_browser.py PATH_TO_MCP_CODE_EXEC
Needs Debian's chromium and chromium-driver (/usr/bin/chromium,
/usr/bin/chromedriver: Selenium Manager never downloads a browser here).
Screenshots go to $MCP_CODE_EXEC_TEST_ARTIFACTS (default
target/test-artifacts/console). Prints one line per passed check, exits
non-zero on the first failure.
"""

import asyncio
import json
import os
import pathlib
import socket
import sys
import tempfile
import time
import urllib.request

import small_server
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

SIMPLE = "print(6*7)"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1,2,3])\nplt.show()"
HOSTILE_IMG = '<img src=x onerror="window.__pwned=1">'
HOSTILE_SCRIPT = "</textarea><script>window.__pwned=2</script>"
HOSTILE = f"print('{HOSTILE_IMG}'); print('{HOSTILE_SCRIPT}')"
SLOW = "import time; time.sleep(3)"

# The entry whose head starts with arguments[0] (and whose state is
# arguments[1], when given), newest first.
FIND_CALL = """
for (const li of document.querySelectorAll('#calls > li.call')) {
  const head = li.querySelector('.summary .head');
  if (head && head.textContent.startsWith(arguments[0]) && (!arguments[1] || li.dataset.state === arguments[1]))
    return li;
}
return null;
"""
# What a hostile string would have made, had it become markup anywhere.
INJECTED = """
return document.querySelectorAll('.detail img[src="x"], .detail script').length
  + document.querySelectorAll('img[src="x"], body script, [onerror]').length;
"""


def check(condition, what, detail=None):
    if not condition:
        raise AssertionError(f"{what}: {detail!r}")
    print(f"ok  {what}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the console port {port} did not listen")


def artifacts_folder():
    default = pathlib.Path(__file__).resolve().parents[2] / "target/test-artifacts/console"
    folder = pathlib.Path(os.environ.get("MCP_CODE_EXEC_TEST_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


class Console:
    """The browser on the console page: waits, screenshots, the console log."""

    def __init__(self, driver, url, folder):
        self.driver, self.url, self.folder = driver, url, folder
        self.shots = 0
        self.log = []

    def wait(self, what, condition, timeout=30):
        wait = WebDriverWait(
            self.driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
        )
        try:
            return wait.until(lambda driver: condition())
        except Exception as error:
            raise AssertionError(f"timed out: {what}") from error

    def script(self, source, *arguments):
        return self.driver.execute_script(source, *arguments)

    def text(self, selector, within=None):
        """The textContent of the first `selector` (in `within`), None when there is none."""
        source = "const e = (arguments[1] || document).querySelector(arguments[0]); return e ? e.textContent : null;"
        return self.script(source, selector, within)

    def screenshot(self, name):
        self.shots += 1
        path = self.folder / f"{self.shots:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        print(f"screenshot {path}", flush=True)

    def collect_log(self):
        self.log.extend(self.driver.get_log("browser"))

    def open(self):
        self.driver.get(self.url)
        self.wait("the console goes live", lambda: self.driver.find_element(By.ID, "live").text == "live")

    def call(self, head, state=None, timeout=30):
        """The entry for `head`, waited for."""
        return self.wait(
            f"an entry for {head!r} ({state or 'any state'})", lambda: self.script(FIND_CALL, head, state), timeout
        )

    def finished(self, head, status="success"):
        """The finished entry for `head`, with `status`."""

        def done():
            li = self.script(FIND_CALL, head, "finished")
            return (
                li
                if li and f"status-{status}" in li.find_element(By.CSS_SELECTOR, ".status").get_attribute("class")
                else None
            )

        return self.wait(f"{head!r} finished with {status}", done)

    def expand(self, head):
        """Clicks the finished entry's summary; its loaded detail."""
        li = self.finished(head)
        summary = li.find_element(By.CSS_SELECTOR, ".summary")
        summary.click()
        check(summary.get_attribute("aria-expanded") == "true", f"the summary of {head!r} says it is expanded")
        return self.wait(
            f"the detail of {head!r}", lambda: li.find_elements(By.CSS_SELECTOR, ".detail pre.code") and li
        ).find_element(By.CSS_SELECTOR, ".detail")

    def running_time(self, head):
        """The running entry's time once it reads a second or more."""

        def ticked():
            li = self.script(FIND_CALL, head, "running")
            text = self.text(".summary .duration", li) if li else ""
            return text.startswith("running ") and not text.startswith("running 0") and text

        return self.wait(f"the running time of {head!r} ticks past a second", ticked, 10)

    def not_injected(self, where):
        check(
            self.script(INJECTED) == 0, f"no element or script made from hostile text ({where})", self.script(INJECTED)
        )
        pwned = self.script("return typeof window.__pwned")
        check(pwned == "undefined", f"window.__pwned is undefined ({where})", pwned)


def log_problems(entries):
    """Console entries that betray a CSP violation, injected code or a failure.
    Allowed: a 404 for /favicon.ico, which Chromium asks for by itself (the
    page declares no icon)."""
    problems = []
    for entry in entries:
        message = entry.get("message", "")
        lowered = message.lower()
        betrays = any(word in lowered for word in ("content security policy", "content-security-policy", "pwned"))
        if betrays or (entry.get("level") == "SEVERE" and "/favicon.ico" not in message):
            problems.append(entry)
    return problems


async def run(client, code):
    result = await client.call_tool("run_python", {"code": code})
    check(
        result.structuredContent["status"] == "success", f"{code.splitlines()[0]!r} succeeds", result.structuredContent
    )
    return result


async def in_browser(function, *arguments):
    """Selenium blocks: off the event loop, so the MCP client keeps reading."""
    return await asyncio.to_thread(function, *arguments)


async def browse(client, console):
    await in_browser(console.open)
    check(True, "the console page opens and its event stream is live")
    pool = await in_browser(console.wait, "the pool's counts", lambda: console.text("#pool .counts"))
    check("at most 2" in pool, "the status panel shows the pool (at most 2 sandboxes)", pool)
    console.script("window.__sameDocument = 1")

    # (a) A call appears live, without a reload.
    await run(client, SIMPLE)
    await in_browser(console.finished, SIMPLE)
    check(console.script("return window.__sameDocument") == 1, "print(6*7) appeared live, success, without a reload")
    await in_browser(console.screenshot, "live-call")

    # (b) A plot: the expanded detail shows the code and the image loads.
    await run(client, PLOT)
    detail = await in_browser(console.expand, PLOT.splitlines()[0])
    code = detail.find_element(By.CSS_SELECTOR, "pre.code")
    check(console.text("pre.code", detail) == PLOT, "pre.code holds the code, every character")
    check(code.find_elements(By.CSS_SELECTOR, "span.kw"), "the code is highlighted (keywords)")
    loaded = "const img = arguments[0].querySelector('img'); return img && img.complete ? img.naturalWidth : 0;"
    width = await in_browser(console.wait, "the plot's image loads", lambda: console.script(loaded, detail))
    check(width > 0, "the plot's <img> loaded (naturalWidth > 0)", width)
    await in_browser(console.screenshot, "plot-detail")

    # (c) Hostile output is text, live and server-rendered.
    await run(client, HOSTILE)
    detail = await in_browser(console.expand, HOSTILE[:40])
    stdout = console.text("pre.stdout", detail)
    check(
        stdout is not None and HOSTILE_IMG in stdout and HOSTILE_SCRIPT in stdout,
        "pre.stdout shows the markup literally",
        stdout,
    )
    code = console.text("pre.code", detail)
    check(code == HOSTILE, "pre.code shows the hostile code literally", code)
    console.not_injected("live")
    await in_browser(console.screenshot, "hostile-detail")
    await in_browser(console.open)
    head = console.text(".head", await in_browser(console.call, HOSTILE[:40]))
    check(head.startswith(HOSTILE[:100]), "the server-rendered head shows the code literally", head)
    console.not_injected("server-rendered, after a reload")
    await in_browser(console.screenshot, "hostile-reloaded")

    # (d) A running call is shown running (its time ticking), then finished.
    slow = asyncio.create_task(client.call_tool("run_python", {"code": SLOW}))
    await in_browser(console.call, SLOW, "running", 20)
    check(not slow.done(), "the slow call is shown running (data-state=running) before it ends")
    text = await in_browser(console.running_time, SLOW)
    check(text.endswith(" s"), "the running entry's time ticks", text)
    await in_browser(console.screenshot, "running")
    result = await slow
    check(result.structuredContent["status"] == "success", "the slow call succeeds", result.structuredContent)
    await in_browser(console.finished, SLOW)
    check(True, "the slow call is then shown finished, success")
    await in_browser(console.screenshot, "finished")

    console.collect_log()
    problems = log_problems(console.log)
    check(not problems, "the browser's console has no CSP violation, no 'pwned', no unexpected error", problems)


def check_headers(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
        csp = answer.headers.get("Content-Security-Policy", "")
    check("script-src 'self'" in csp and "unsafe-inline" not in csp, "the CSP header is strict", csp)
    for path, kind in (("/console.js", "javascript"), ("/console.css", "text/css")):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            check(kind in answer.headers.get("Content-Type", ""), f"{path} is served as {kind}", answer.headers)


def check_audit(path, codes):
    check(path.exists(), "the audit log exists", path)
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    check(len(lines) == len(codes), f"the audit log has one line per call ({len(codes)})", lines)
    check(all("code" in line and "status" in line for line in lines), "each audit line has code and status", lines)
    logged = sorted((line["code"], line["status"]) for line in lines)
    check(logged == sorted((code, "success") for code in codes), "the audit lines hold each call's code", logged)


async def main(binary):
    base = pathlib.Path(tempfile.mkdtemp())
    port = free_port()
    audit = base / "audit.jsonl"
    env = small_server.environment(base, MCP_BRIDGE_METRICS_ADDR=f"127.0.0.1:{port}", MCP_BRIDGE_AUDIT_LOG=str(audit))
    params = StdioServerParameters(command=binary, args=["serve"], env=env, cwd=str(base))
    async with stdio_client(params) as (reader, writer), ClientSession(reader, writer) as client:
        await client.initialize()
        await in_browser(wait_for_port, port)
        check_headers(port)
        console = Console(browser(), f"http://127.0.0.1:{port}/", artifacts_folder())
        try:
            await browse(client, console)
        except BaseException:
            try:
                console.screenshot("failure")
                console.collect_log()
                print("browser console:", json.dumps(console.log, indent=1), file=sys.stderr)
            except Exception:
                pass
            raise
        finally:
            console.driver.quit()
    check_audit(audit, [SIMPLE, PLOT, HOSTILE, SLOW])
    print("all console checks passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

"""Packages in the sandbox: the run's package directory and what installs into it.

Owns the environment that points pip at the host's package index (a name
only the run's proxy serves, so it works whether or not egress is allowed),
the package directory's site folder (on sys.path before /workspace), and the
install a call asks for with `packages=[...]`, before its code starts. pip
installs for the user (PYTHONUSERBASE is the package directory, an
exec-allowed tmpfs the agent wipes at reset), so what the image has already
(numpy, pandas, ...) satisfies requirements and is not installed again.

It runs nothing but pip, in a process of its own whose output is the
install's, not the run's; it does not touch the agent's channel. Built by the
agent (`exec` of this source); `install` runs in the spare, as the user.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

PACKAGES_DIR = "/run/packages"
INDEX_HOST = "packages.mcp-code-exec.invalid"
# pip's own words for what went wrong, at most this much of them.
MAX_ERROR = 3000
# Entries of pip's report the status carries (the host bounds it again).
MAX_LISTED = 256


def site_dir():
    """Where pip installs for the user under PYTHONUSERBASE."""
    return f"{PACKAGES_DIR}/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def set_environment(environ):
    """What every run sees: pip installs for the user into the package
    directory, wheels only, from the host's index, quietly."""
    environ.update(
        {
            "PYTHONUSERBASE": PACKAGES_DIR,
            "PIP_USER": "1",
            "PIP_INDEX_URL": f"http://{INDEX_HOST}/simple",
            "PIP_TRUSTED_HOST": INDEX_HOST,
            "PIP_ONLY_BINARY": ":all:",
            # The image's Python is the system's (PEP 668); the package
            # directory is the run's own, wiped at reset.
            "PIP_BREAK_SYSTEM_PACKAGES": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
            # The host keeps the wheels; a second cache would fill /tmp.
            "PIP_NO_CACHE_DIR": "1",
            "PIP_NO_WARN_SCRIPT_LOCATION": "1",
            "PIP_ROOT_USER_ACTION": "ignore",
        }
    )


def prepare():
    """The site folder exists before any run (an entry of sys.path that does
    not exist when first imported from is never looked at again)."""
    os.makedirs(site_dir(), exist_ok=True)


class InstallError(Exception):
    """The requirements could not be installed; the message says why."""


def install(requirements, run=subprocess.run):
    """pip-installs `requirements` (checked by the host: names and versions
    only); returns {"installed": [{name, version}], "duration_ms"}."""
    started = time.monotonic()
    scratch = f"{PACKAGES_DIR}/.pip-{os.getpid()}"
    os.makedirs(scratch, exist_ok=True)
    report = f"{scratch}/report.json"
    # pip's downloads and unpacking count in the package directory, not in /tmp.
    env = dict(os.environ, TMPDIR=scratch)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--report", report, "--", *requirements]
    try:
        # In its scratch folder: never /workspace, where a call's files (or a
        # `pip/` shadowing pip) could be read as requirements or modules.
        done = run(
            command, cwd=scratch, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace"
        )
        if done.returncode != 0:
            raise InstallError(explain(done.stderr + done.stdout, requirements))
        with open(report, encoding="utf-8") as f:
            installed = [
                {"name": str(item["metadata"]["name"]), "version": str(item["metadata"]["version"])}
                for item in json.load(f).get("install", [])
            ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    importlib.invalidate_caches()
    return {"installed": installed[:MAX_LISTED], "duration_ms": int((time.monotonic() - started) * 1000)}


def explain(output, requirements):
    """One message from pip's output: its ERROR lines, what the index knows
    of a package it found nothing for, and the variable when the package
    directory is full."""
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")] or output.strip().splitlines()[-5:]
    message = "\n".join(errors)[:MAX_ERROR]
    if "No space left on device" in output:
        message += (
            f"\nthe package directory {PACKAGES_DIR} is full: raise MCP_BRIDGE_PACKAGES_BYTES "
            "(it counts in MCP_BRIDGE_MEMORY)"
        )
    for line in errors:
        marker = "No matching distribution found for "
        if marker in line:
            name = line.split(marker, 1)[1].split()[0]
            why = ask_index(name)
            if why:
                message += f"\n{why}"
    return f"packages {', '.join(requirements)} could not be installed:\n{message}"


def ask_index(requirement):
    """The index's own word on why it has nothing for `requirement`."""
    name = requirement
    for stop in "[<>=!~ ;":
        name = name.split(stop, 1)[0]
    try:
        url = f"http://{INDEX_HOST}/why/{urllib.parse.quote(name)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read(2000).decode("utf-8", "replace").strip()
    except OSError:
        return ""

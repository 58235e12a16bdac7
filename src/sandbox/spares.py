# Which of the container's two fork sources serves a run: the light zygote
# (nothing preloaded: a fork of a ~10 MiB interpreter) or the data zygote
# (MCP_BRIDGE_PRELOAD: numpy, pandas, matplotlib, ~95 MiB, whose fork and
# exit cost ~3 ms of CPU more). Owns that choice only; the agent (agent.py)
# keeps the spares, forks and resets them. It never runs or imports the
# code it looks at.
#
# The choice is a speed hint, never a matter of correctness: a light spare
# imports anything from disk as `python3` would, only slower (pandas: about
# a second). So the light spare serves only code that surely needs nothing
# preloaded: every module it imports is in the standard library (or is the
# sandbox's own), it does not import dynamically, it is no session (whose
# later calls may import anything) and installs no packages. Anything else,
# code too long to look at cheaply included, goes to the data spare: a run is
# never slower than with one fork source.

import ast
import sys

# Code longer than this is not parsed to choose (parsing costs ~1 µs a byte):
# the data spare serves it.
MAX_SCANNED_BYTES = 64 * 1024
# Standard modules that import by name at run time (a pickle names its
# classes' modules): code using them may need anything.
DYNAMIC_IMPORTERS = frozenset({"importlib", "pickle", "pkgutil", "runpy", "shelve", "zipimport"})
# Calls that run or import code the scan cannot see.
DYNAMIC_CALLS = frozenset({"__import__", "compile", "eval", "exec"})
LIGHT_MODULES = frozenset(sys.stdlib_module_names - DYNAMIC_IMPORTERS) | {"mcp"}


def needs_preload(request):
    """True unless the request surely runs as fast on a light spare: see
    the module's opening comment."""
    if request.get("session") or request.get("packages"):
        return True
    code = request["code"]
    if len(code) > MAX_SCANNED_BYTES:
        return True
    try:
        tree = compile(code, "<scan>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except (SyntaxError, ValueError):
        return False  # it fails the same way anywhere, at once
    except (MemoryError, RecursionError):
        return True
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(alias.name.partition(".")[0] not in LIGHT_MODULES for alias in node.names):
                return True
        elif isinstance(node, ast.ImportFrom):
            if node.level or (node.module or "").partition(".")[0] not in LIGHT_MODULES:
                return True
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in DYNAMIC_CALLS:
            return True
    return False

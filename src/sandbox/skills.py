# mcp-code-exec: skills as sandboxed code sees them.
#
# The agent compiles this once at startup (its sixth argument) and, in a run
# the host lets use skills, calls `install(env, channel)`: `runtime` gains
# save_skill, list_skills, delete_skill, restore_skill and skill_file, and the package
# `skills` imports each saved skill as `skills.<name>` from the host, on
# import, through the run's channel to the host (the `@skills` calls). The
# host stores bytes and checks names and sizes; the code is compiled here
# before it is saved and only ever runs here.

import base64
import importlib.abc
import importlib.util
import linecache
import re
import sys
import types

SERVER = "@skills"
NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*\Z")


class SkillError(Exception):
    """The skill store refused (a bad name, a size over its bound, no such skill)."""


def _ask(channel, operation, arguments):
    answer = channel.request(SERVER, operation, arguments).result()
    if not answer.get("ok"):
        raise SkillError(answer.get("error") or "the skill store refused")
    return answer.get("result")


def _check_name(name):
    if not isinstance(name, str) or len(name) > 64 or not NAME.match(name):
        raise SkillError(
            f"{name!r} is not a skill name: a lowercase letter, then lowercase letters, digits and "
            "single underscores between them, at most 64 (like load_sales)"
        )


def _filename(name):
    return f"skill://{name.replace('_', '-')}/{name}.py"


class _Skills:
    """The skill functions bound onto `runtime`."""

    def __init__(self, channel):
        self._channel = channel

    def save_skill(self, name, code, description, files=None, usage=None):
        """Saves `code` as the skill `name` (a module: `from skills import name`
        in later runs) with a one-line `description`, an optional `usage`
        text for its SKILL.md and `files` ({relative path: str or bytes}).
        The code must compile; a skill of that name is replaced, and
        restore_skill(name) brings it back."""
        _check_name(name)
        if not isinstance(code, str) or not isinstance(description, str):
            raise TypeError("save_skill(name, code, description): code and description are str")
        compile(code, _filename(name), "exec")  # a SyntaxError is the caller's
        encoded = {}
        for path, data in (files or {}).items():
            if isinstance(data, str):
                data = data.encode()
            encoded[path] = base64.b64encode(bytes(data)).decode()
        arguments = {"name": name, "code": code, "description": description, "files": encoded}
        if usage is not None:
            arguments["usage"] = str(usage)
        saved = _ask(self._channel, "save", arguments)
        _forget(name)  # the next import reads the new one
        return saved

    def list_skills(self):
        """The saved skills: [{"name", "description", "bytes"}]."""
        return _ask(self._channel, "list", {})

    def delete_skill(self, name):
        _check_name(name)
        _forget(name)
        return _ask(self._channel, "delete", {"name": name})

    def skill_file(self, name, path):
        """The bytes of a file saved with skill `name` (`files={path: ...}`;
        `SKILL.md` and `<name>.py` are there too)."""
        _check_name(name)
        return _file(self._channel, name, path)

    def restore_skill(self, name):
        """Brings back the version the last save of `name` replaced."""
        _check_name(name)
        _forget(name)
        return _ask(self._channel, "restore", {"name": name})


def _file(channel, name, path):
    if not isinstance(path, str):
        raise TypeError("skill_file: the path is a str, like 'data/lookup.csv'")
    return base64.b64decode(_ask(channel, "file", {"name": name, "path": path})["data"])


def _forget(name):
    """Drops an imported skill, so that the next import reads it anew."""
    sys.modules.pop(f"skills.{name}", None)
    package = sys.modules.get("skills")
    if isinstance(getattr(package, "__loader__", None), _Finder):
        package.__dict__.pop(name, None)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The `skills` package (unless the run has a real one on its path: it
    is last on `sys.meta_path`) and each `skills.<name>`, fetched from the
    host; tracebacks show a skill's source."""

    def __init__(self, channel):
        self._channel = channel

    def find_spec(self, fullname, path, target=None):
        if fullname == "skills":
            return importlib.util.spec_from_loader("skills", self, is_package=True)
        prefix, _, name = fullname.partition(".")
        if prefix != "skills" or not name or "." in name or not NAME.match(name):
            return None
        if not isinstance(getattr(sys.modules.get("skills"), "__loader__", None), _Finder):
            return None  # a package of the run's own, not the saved skills
        return importlib.util.spec_from_loader(fullname, self, origin=_filename(name))

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if module.__name__ == "skills":
            module.__doc__ = "The skills saved by runs: `from skills import <name>`."
            module.__path__ = []
            return
        name = module.__name__.partition(".")[2]
        try:
            source = _ask(self._channel, "source", {"name": name})["code"]
        except SkillError as exc:
            # Without `name`: `from skills import x` would take a
            # ModuleNotFoundError naming `skills.x` for "no such attribute"
            # and say only "cannot import name".
            raise ModuleNotFoundError(f"no skill {name!r} ({exc})") from None
        filename = _filename(name)
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        module.__file__ = filename
        # The skill's own files, from its code: skill_file("data/lookup.csv").
        channel = self._channel
        module.skill_file = lambda path: _file(channel, name, path)
        exec(compile(source, filename, "exec"), module.__dict__)


FUNCTIONS = ("save_skill", "list_skills", "delete_skill", "restore_skill", "skill_file")

# Made once, when the agent compiles this module (before the zygote forks
# runs), so that a run only points them at its channel: built in each run,
# they cost ~200 us of its copy-on-write faults, against ~40 so.
_skills = _Skills(None)
_finder = _Finder(None)
_runtime = types.ModuleType("runtime", "Saved skills: " + ", ".join(FUNCTIONS) + ".")
for _name in FUNCTIONS:
    setattr(_runtime, _name, getattr(_skills, _name))


def install(env, channel):
    """Binds the skill functions onto the run's `runtime` (the `mcp`
    package's when the run has MCP servers, else a module of their own) and
    makes `skills` importable, for this process (a session's later calls
    find it there)."""
    _skills._channel = channel
    _finder._channel = channel
    runtime = env.get("runtime")
    if getattr(runtime, "__name__", None) not in ("mcp.runtime", "runtime"):
        env["runtime"] = runtime = _runtime
    for name in FUNCTIONS:  # again in a session: a call may have replaced one
        setattr(runtime, name, getattr(_skills, name))
    if _finder not in sys.meta_path:
        sys.meta_path.append(_finder)

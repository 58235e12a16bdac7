"""The sandbox's half of skills (src/sandbox/skills.py) against a fake host:
what save_skill checks before it sends, and `from skills import …`."""

import concurrent.futures
import sys
import traceback

import pytest


class FakeHost:
    """A channel whose `@skills` calls are answered from a dict."""

    def __init__(self):
        self.saved = {}
        self.sent = []

    def request(self, server, tool, arguments):
        self.sent.append((server, tool, arguments))
        future = concurrent.futures.Future()
        if tool == "save":
            self.saved[arguments["name"]] = arguments["code"]
            answer = {"ok": True, "result": {"name": arguments["name"]}}
        elif tool == "delete" and self.saved.pop(arguments["name"], None) is not None:
            answer = {"ok": True, "result": {"deleted": True}}
        elif tool == "source" and arguments["name"] in self.saved:
            answer = {"ok": True, "result": {"code": self.saved[arguments["name"]]}}
        else:
            answer = {"ok": False, "error": f"no skill {arguments.get('name')!r} is saved"}
        future.set_result(answer)
        return future


@pytest.fixture
def installed(skills_module):
    host = FakeHost()
    env = {}
    saved_modules = dict(sys.modules)
    saved_path = list(sys.meta_path)
    skills_module.install(env, host)
    yield env["runtime"], host
    sys.modules.clear()
    sys.modules.update(saved_modules)
    sys.meta_path[:] = saved_path


def test_a_saved_skill_is_imported_in_a_later_run(installed, skills_module):
    runtime, host = installed
    runtime.save_skill("load_sales", "def total(rows):\n    return sum(rows)\n", "Sums rows.")
    assert host.sent[0][:2] == ("@skills", "save")
    from skills import load_sales  # noqa: PLC0415 (the import under test)

    assert load_sales.total([1, 2, 3]) == 6
    from skills.load_sales import total  # noqa: PLC0415

    assert total([4]) == 4
    # Installed again (a session's next call): one finder, the module kept.
    skills_module.install({"runtime": runtime}, host)
    assert sum(isinstance(f, skills_module._Finder) for f in sys.meta_path) == 1
    # Saved again: the next import, in the same process, reads the new one.
    runtime.save_skill("load_sales", "def total(rows):\n    return -1\n", "Negative.")
    from skills import load_sales as again  # noqa: PLC0415

    assert again.total([1]) == -1
    runtime.delete_skill("load_sales")
    with pytest.raises(ModuleNotFoundError):
        from skills import load_sales  # noqa: F401, F811, PLC0415


def test_the_package_has_a_spec_and_a_real_package_of_the_run_wins(installed, tmp_path, monkeypatch):
    import importlib.util  # noqa: PLC0415

    assert importlib.util.find_spec("skills") is not None
    (tmp_path / "skills").mkdir()
    (tmp_path / "skills" / "__init__.py").write_text("MINE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("skills", None)
    import skills  # noqa: PLC0415

    assert skills.MINE, "the run's own package, found first on sys.path"


def test_code_that_does_not_compile_is_not_sent(installed):
    runtime, host = installed
    with pytest.raises(SyntaxError):
        runtime.save_skill("broken", "def f(:\n", "Broken.")
    assert host.sent == []


def test_bad_names_are_refused_before_anything_is_sent(installed, skills_module):
    runtime, host = installed
    for name in ["Load", "a__b", "a_", "a-b", "x" * 65, "../x", ""]:
        with pytest.raises(skills_module.SkillError):
            runtime.save_skill(name, "x = 1", "X.")
    assert host.sent == []


def test_a_missing_skill_is_a_module_not_found_error(installed):
    with pytest.raises(ModuleNotFoundError, match="no skill 'nothing'"):
        import skills.nothing  # noqa: F401, PLC0415
    with pytest.raises(ModuleNotFoundError, match="no skill 'nothing'"):
        from skills import nothing  # noqa: F401, PLC0415


def test_a_skills_traceback_shows_its_source(installed):
    runtime, _ = installed
    runtime.save_skill("fails", "def boom():\n    raise ValueError('from the skill')\n", "Fails.")
    from skills import fails  # noqa: PLC0415

    try:
        fails.boom()
    except ValueError:
        text = traceback.format_exc()
    assert "skill://fails/fails.py" in text
    assert "raise ValueError('from the skill')" in text


def test_standard_modules_are_not_shadowed(installed):
    runtime, _ = installed
    runtime.save_skill("json", "loads = None\n", "Not the json module.")
    import json  # noqa: PLC0415

    assert json.loads("1") == 1
    from skills import json as saved  # noqa: PLC0415

    assert saved.loads is None

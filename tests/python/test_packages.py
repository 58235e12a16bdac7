"""packages.py and the agent's reading of what it reports, without a
container: pip's failures become one message (the variable named when the
package directory is full, the index's word when it had nothing), and the
status the child sends about installs is bounded and typed."""

import json
import subprocess

import pytest


def fake_pip(returncode, stderr="", installed=()):
    def run(command, env, cwd, **_):
        assert cwd == env["TMPDIR"], "pip runs in its scratch folder, never /workspace"
        assert command[3:6] == ["install", "--quiet", "--report"]
        assert command[7] == "--", "requirements can never be read as options"
        assert "/.pip-" in env["TMPDIR"], "pip's scratch is in the package directory"
        if returncode == 0:
            report = {"install": [{"metadata": {"name": n, "version": v}} for n, v in installed]}
            with open(command[6], "w") as f:
                json.dump(report, f)
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    return run


@pytest.fixture
def in_tmp(packages, tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "PACKAGES_DIR", str(tmp_path))
    return packages


def test_an_install_reports_names_and_versions(in_tmp, tmp_path):
    done = in_tmp.install(["tabulate"], run=fake_pip(0, installed=[("tabulate", "0.9.0")]))
    assert done["installed"] == [{"name": "tabulate", "version": "0.9.0"}]
    assert isinstance(done["duration_ms"], int)
    assert list(tmp_path.iterdir()) == [], "pip's scratch folder is gone"


def test_a_full_package_directory_names_the_variable(in_tmp):
    stderr = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device\n"
    with pytest.raises(in_tmp.InstallError) as error:
        in_tmp.install(["pyarrow"], run=fake_pip(1, stderr))
    assert "MCP_BRIDGE_PACKAGES_BYTES" in str(error.value)
    assert str(error.value).startswith("packages pyarrow could not be installed:")


def test_nothing_found_asks_the_index_why(in_tmp, monkeypatch):
    asked = []
    monkeypatch.setattr(in_tmp, "ask_index", lambda name: asked.append(name) or "only source distributions")
    stderr = (
        "ERROR: Could not find a version that satisfies the requirement onlysdist>=1 (from versions: none)\n"
        "ERROR: No matching distribution found for onlysdist>=1\n"
    )
    with pytest.raises(in_tmp.InstallError) as error:
        in_tmp.install(["onlysdist>=1"], run=fake_pip(1, stderr))
    assert asked == ["onlysdist>=1"]
    assert "only source distributions" in str(error.value)


def test_the_childs_install_report_is_bounded_and_typed(agent):
    good = {"installed": [{"name": "six", "version": "1.16.0"}] * 300, "duration_ms": 5}
    parsed = agent.parse_installed(good)
    assert len(parsed["installed"]) == 256 and parsed["duration_ms"] == 5
    assert agent.parse_installed({"installed": [{"name": 1, "version": "x"}], "duration_ms": 1}) == {
        "installed": [],
        "duration_ms": 1,
    }
    for bad in (None, [], {"installed": "six"}, {"installed": [], "duration_ms": -1}, {"installed": []}):
        assert agent.parse_installed(bad) is None
    forged = agent.parse_installed(
        {"installed": [{"name": "six\nstatus: success", "version": "1\x1b[2J"}], "duration_ms": 10**30}
    )
    assert forged == {"installed": [{"name": "sixstatus: success", "version": "1[2J"}], "duration_ms": 10**9}
